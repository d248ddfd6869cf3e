"""The drain flag: the launcher (deploy/server.py) creates a file before a graceful stop, the orchestrator then
refuses new turns and registrations while the turns in flight finish."""
from __future__ import annotations

import os

DRAIN_FILE_ENV = "TALKING_HEAD_DRAIN_FILE"  # names the flag file, for every stub process of the server


def draining(path: str | None = None) -> bool:
    """Whether the server is shutting down: the file named by $TALKING_HEAD_DRAIN_FILE exists.

    deploy.server creates it when it starts a graceful stop (before Triton gets SIGTERM): from then on
    new turns and registrations are refused with UNAVAILABLE while turns in flight run to their end.
    Triton's own SIGTERM handling cannot do this for a BLS pipeline (see RELIABILITY.md).
    """
    path = os.environ.get(DRAIN_FILE_ENV) if path is None else path
    return bool(path) and os.path.exists(path)
