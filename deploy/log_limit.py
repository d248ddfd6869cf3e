"""A log one client cannot flood: each kind of record (its logger, level and message template) at most `burst` at once
and `per_minute` sustained; the rest are counted, and the next one let through says how many were not logged.

A library logs what a peer made it do: aiortc 1.16 logs a warning for every audio packet its Opus decoder refuses,
so a client sending undecodable packets wrote a line of the gateway's log for each (RELIABILITY.md, "A ninth pass").
Messages that differ by their text (a session's id in an f-string) are kinds of their own; the kinds kept are bounded
(`kinds`, least recently seen out).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from deploy.front_door.quota import TokenBucket


class RepeatLimit(logging.Filter):
    def __init__(self, per_minute: float = 60.0, burst: int = 10, kinds: int = 1000,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.per_minute, self.burst, self.kinds, self.clock = per_minute, burst, kinds, clock
        self.seen: dict[tuple, list] = {}  # kind -> [its bucket, records not logged since one was]

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        entry = self.seen.pop(kind, None) or [TokenBucket(self.per_minute / 60, self.burst, self.clock), 0]
        self.seen[kind] = entry  # the most recently seen last
        while len(self.seen) > self.kinds:
            del self.seen[next(iter(self.seen))]
        if not entry[0].take():
            entry[1] += 1
            return False
        if entry[1]:
            record.msg = f"{record.msg} [{entry[1]} more like it were not logged]"
            entry[1] = 0
        return True


def configure_logging(level: str, quiet: tuple[str, ...] = ()) -> None:
    """A public endpoint's log (the front door's, the gateway's): `level` and up, the `quiet` loggers (a library's)
    from warnings, and each kind of record rate-limited."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    limit_repeats()


def limit_repeats(logger: logging.Logger | None = None, **kw) -> RepeatLimit:
    """Put one `RepeatLimit` on each handler of `logger` (the root's by default: every logger's records reach them,
    where a filter on a logger sees only its own)."""
    limit = RepeatLimit(**kw)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(limit)
    return limit
