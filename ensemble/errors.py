"""Errors the orchestrator reports back to the client."""
from __future__ import annotations


def wire_message(message: object) -> str:
    """`message` as text any response can carry. A lone surrogate (a JSON escape such as "\\ud800" in what the
    client sent, echoed in the message) cannot be encoded as UTF-8: Triton's Python backend would raise while
    making the error, and the response naming the problem would never be sent. It is written as its escape."""
    return str(message).encode("utf-8", "backslashreplace").decode("utf-8")


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
