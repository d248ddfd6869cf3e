"""Errors the orchestrator reports back to the client."""
from __future__ import annotations


class InputError(ValueError):
    """A problem with what the user sent (text, audio, avatar image, ids).

    The message names the problem and, where there is one, the expected value;
    the orchestrator turns it into a Triton INVALID_ARG error with this message.
    Anything else raised inside the orchestrator is a server-side bug.
    """


class Overloaded(RuntimeError):
    """The service is at its session limit; the client may retry later (UNAVAILABLE)."""


class DeadlineExceeded(RuntimeError):
    """The turn's deadline (TurnOptions.deadline_s) passed; its remaining work was dropped."""
