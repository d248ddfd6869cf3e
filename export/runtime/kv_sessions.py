"""Which cache slot each LLM session holds: allocation, release and eviction of abandoned sessions.

Pure Python (no torch), shared by the GPU session runtime (`export.runtime.llm_sessions`) and its tests.
A session is a caller-chosen non-zero integer (the orchestrator draws one per turn); it owns one
slot of the static KV cache from its first request until it is released, or until it has been idle
for `idle_timeout_s` (a turn that died without releasing: its slot is reclaimed on the next call).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class SessionError(ValueError):
    """A request names a session the table cannot serve (full, unknown, over length)."""


@dataclass
class Session:
    slot: int
    length: int = 0  # tokens cached
    last_used: float = 0.0
    sampler: object = None  # a session that samples its own tokens: its seeded generator (numpy.random.Generator)


class SessionTable:
    def __init__(self, slots: int, max_length: int, idle_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic):
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self.max_length = max_length
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.sessions: dict[int, Session] = {}
        self._free = list(range(slots - 1, -1, -1))  # pop() hands out slot 0 first
        self.evicted = 0  # sessions reclaimed after their idle timeout

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self, session_id: int, new_tokens: int) -> Session:
        """The session's slot (allocated on first use), checked to have room for `new_tokens` more."""
        s = self.sessions.get(session_id)
        if s is None:
            if not self._free:
                self.evict_idle()
            if not self._free:
                raise SessionError(f"all {self.slots} LLM cache slots are in use; retry later")
            s = self.sessions[session_id] = Session(self._free.pop())
        if s.length + new_tokens > self.max_length:
            raise SessionError(f"LLM session {session_id}: {s.length} + {new_tokens} tokens exceed the cache "
                               f"({self.max_length})")
        s.last_used = self.clock()
        return s

    def advance(self, session_id: int, tokens: int) -> None:
        self.sessions[session_id].length += tokens

    def release(self, session_id: int) -> bool:
        """Free the session's slot; False when it was not held (already released or evicted)."""
        s = self.sessions.pop(session_id, None)
        if s is None:
            return False
        self._free.append(s.slot)
        return True

    def evict_idle(self) -> list[int]:
        """Release every session idle for longer than the timeout; their ids."""
        now = self.clock()
        stale = [sid for sid, s in self.sessions.items() if now - s.last_used > self.idle_timeout_s]
        for sid in stale:
            self.release(sid)
        self.evicted += len(stale)
        return stale
