"""Conversations by `session` id: the reply in flight (for barge-in) and the microphone's state.

Bounded: at most `max_open` sessions are remembered (the least recently used is forgotten
first, never one with a reply in flight) and a session unused for `idle_s` is forgotten,
which frees its turn detector.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Session:
    id: str
    turn: Any = None  # the ensemble.pipeline.Turn in flight, if any
    mic: Any = None  # the session's ensemble.vad.TurnDetector, once it streamed microphone audio
    mic_lock: Any = None  # asyncio.Lock: microphone chunks are fed to the detector one at a time, in order
    last_used: float = field(default_factory=time.monotonic)


class Sessions:
    def __init__(self, max_open: int = 1024, idle_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.max_open = max_open
        self.idle_s = idle_s
        self.clock = clock
        self._open: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str) -> Session:
        """The session (created on first use), marked used now."""
        self._expire()
        s = self._open.get(session_id)
        if s is None:
            s = self._open[session_id] = Session(session_id)
        self._open.move_to_end(session_id)
        s.last_used = self.clock()
        return s

    def peek(self, session_id: str) -> Session | None:
        return self._open.get(session_id)

    def _expire(self) -> None:
        now = self.clock()
        for sid in [sid for sid, s in self._open.items() if s.turn is None and now - s.last_used > self.idle_s]:
            del self._open[sid]
        idle = [sid for sid, s in self._open.items() if s.turn is None]  # least recently used first
        while len(self._open) >= self.max_open and idle:
            del self._open[idle.pop(0)]

    def __len__(self) -> int:
        return len(self._open)
