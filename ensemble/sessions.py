"""Conversations by `session` id: the reply in flight (for barge-in) and the microphone's state.

Owned: a session belongs to the secret (`session_token`) of the request that opened it, and each token has its own
sessions: the same `session` id under another token is another conversation (no cancelling, barging in on or
listening to someone else's, no claiming an id first, and nothing tells whether another client uses an id). Bounded
per client and in all: a token holds at most `max_per_client` sessions and the house at most `max_open`; a session
unused for `idle_s` is forgotten, which frees its turn detector. To make room for a client's new session, its own
least recently used idle session is forgotten; when the house is full, one of the clients holding the most sessions
loses its least recently used idle one, so a client opening many sessions forgets its own first (if all of theirs
are busy, the least recently used idle session of any client goes). Never forgotten: a session with a reply in
flight or a microphone turn under way; when none can go, the new session is refused.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ensemble.errors import Overloaded


@dataclass
class Session:
    id: str
    token: str  # the secret of the client that opened it
    turn: Any = None  # the ensemble.pipeline.Turn in flight, if any
    mic: Any = None  # the session's ensemble.vad.TurnDetector, once it streamed microphone audio
    mic_lock: Any = None  # asyncio.Lock: microphone chunks are fed to the detector one at a time, in order
    last_used: float = field(default_factory=time.monotonic)

    def busy(self) -> bool:
        """A reply in flight or the user speaking into the microphone: not to be forgotten."""
        return self.turn is not None or (self.mic is not None and self.mic.in_turn)


class Sessions:
    def __init__(self, max_open: int = 1024, idle_s: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 max_per_client: int = 64):
        self.max_open = max_open
        self.max_per_client = max_per_client
        self.idle_s = idle_s
        self.clock = clock
        self._open: OrderedDict[tuple[str, str], Session] = OrderedDict()  # (token, session id) -> session
        self._held: dict[str, int] = {}  # token -> sessions open

    def get(self, session_id: str, token: str) -> Session:
        """This token's session of that id (opened by this request when new), marked used now."""
        self._expire()
        key = (token, session_id)
        s = self._open.get(key)
        if s is None:
            self._make_room(token)
            s = self._open[key] = Session(session_id, token)
            self._held[token] = self._held.get(token, 0) + 1
        self._open.move_to_end(key)
        s.last_used = self.clock()
        return s

    def peek(self, session_id: str, token: str) -> Session | None:
        """This token's open session of that id, None if it has none."""
        return self._open.get((token, session_id))

    def _expire(self) -> None:
        now = self.clock()
        for key in [key for key, s in self._open.items() if s.turn is None and now - s.last_used > self.idle_s]:
            self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        token = self._open.pop(key).token
        self._held[token] -= 1
        if not self._held[token]:
            del self._held[token]

    def _make_room(self, token: str) -> None:
        if self._held.get(token, 0) >= self.max_per_client:
            mine = next((key for key, s in self._open.items() if s.token == token and not s.busy()), None)
            if mine is None:
                raise Overloaded(f"this client has {self._held[token]} sessions open and busy (limit "
                                 f"{self.max_per_client} per client); end one or retry later")
            self._forget(mine)
            return
        if len(self._open) < self.max_open:
            return
        most = max(self._held.values())  # least recently used first, among the clients holding the most
        idle = next((key for key, s in self._open.items() if self._held[s.token] == most and not s.busy()), None)
        if idle is None:
            idle = next((key for key, s in self._open.items() if not s.busy()), None)
        if idle is None:
            raise Overloaded(f"{len(self._open)} sessions are open and busy (limit {self.max_open}); retry later")
        self._forget(idle)

    def __len__(self) -> int:
        return len(self._open)
