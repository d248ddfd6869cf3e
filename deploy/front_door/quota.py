"""Who a client is (API keys) and what it may use (per-identity quotas), for the front door.

Keys: a file of `name:key` lines (`#` comments and blank lines skipped). Only the sha256 of each key is kept; a
presented key is hashed and compared with every stored digest in constant time (no early exit), so neither the
comparison nor the loop tells how much of a key was right. The identity is the key's `name`.

Quotas, per identity, independent of every other identity: open streams, turns in flight (requests on `talking_head`
streams whose final response has not come back), unary calls in flight, requests per second (a token bucket:
`rate` per second, bursts of `burst`) and, for microphone chunks instead of requests, seconds of audio per second.
Exceeding one is refused with RESOURCE_EXHAUSTED by the proxy.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ensemble.options import Limits as ServiceLimits

NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-@")
MIN_KEY_CHARS = 16


class KeyFileError(ValueError):
    """The keys file cannot be used (the message names the line)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """identity name -> sha256(key); `identify(key)` -> the name, or None."""

    def __init__(self, keys: dict[str, str]):
        self._digests = [(name, _digest(key)) for name, key in keys.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        keys: dict[str, str] = {}
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, key = line.partition(":")
            name, key = name.strip(), key.strip()
            if not sep or not name or not key:
                raise KeyFileError(f"{path}:{n}: expected `name:key`")
            if not set(name) <= NAME_CHARS:
                raise KeyFileError(f"{path}:{n}: name {name!r} may use only A-Z a-z 0-9 _ . - @")
            if len(key) < MIN_KEY_CHARS:
                raise KeyFileError(f"{path}:{n}: the key of {name!r} is shorter than {MIN_KEY_CHARS} characters")
            if name in keys:
                raise KeyFileError(f"{path}:{n}: {name!r} appears twice")
            keys[name] = key
        if not keys:
            raise KeyFileError(f"{path}: no `name:key` line")
        return cls(keys)

    def identify(self, key: str | None) -> str | None:
        if not key:
            return None
        presented = _digest(key)
        found = None
        for name, digest in self._digests:  # every digest compared, whatever matched
            if hmac.compare_digest(presented, digest) and found is None:
                found = name
        return found

    def __len__(self) -> int:
        return len(self._digests)


def bearer(metadata) -> str | None:
    """The key of an `authorization: Bearer <key>` header among gRPC metadata (key, value) pairs."""
    for k, v in metadata or ():
        if k.lower() == "authorization":
            v = v.decode(errors="replace") if isinstance(v, bytes) else v
            scheme, _, key = v.strip().partition(" ")
            return key.strip() if scheme.lower() == "bearer" else None
    return None


@dataclass(frozen=True)
class Limits:
    max_streams: int = 8  # ModelStreamInfer calls open at once
    # talking_head requests in flight at once (cancels not counted; the chunks of one session's microphone once)
    max_turns: int = 4
    rate: float = 20.0  # requests per second (unary calls, stream opens and stream requests), sustained
    burst: int = 40  # ... and at once
    # a live microphone sends more requests than `rate` (the SDK: 32 ms chunks, 31 a second), so its chunks (action
    # `mic`) spend seconds of audio instead: at most `mic_rate` seconds a second (real time for as many microphones as
    # max_turns) and `mic_burst_s` at once; a chunk counts as at least one VAD window (media.VAD_WINDOW, 32 ms)
    mic_rate: float = 4.0
    mic_burst_s: float = 8.0
    # one gRPC message from a client: the orchestrator's largest input (an avatar image) and room for the rest
    max_message_bytes: int = ServiceLimits.max_avatar_bytes + 2 * 1024 * 1024
    max_request_id_bytes: int = ServiceLimits.max_request_id_bytes  # Triton echoes the id in every response
    # a stream whose client holds it up this long in all (responses not taken, its HTTP/2 window full; earned back
    # second for second while it keeps up) is cut off: its turns are cancelled upstream, so neither Triton nor the
    # door holds its unread audio and video, whether the client stopped reading or reads slower than the stream
    max_stall_s: float = 10.0
    max_calls: int = 2  # unary calls (avatar registrations) in flight at once
    # avatar registrations, sustained and at once: the store is shared and bounded (ensemble/avatar.py, 1000 images,
    # least recently used out first), so one key registering without pause would push other clients' avatars out
    registrations_per_hour: float = 120.0
    registration_burst: int = 30
    # a stream with a turn in flight whose upstream sends nothing for this long is ended (UNAVAILABLE) and its turns
    # cancelled: a turn streams events all along, so this silence means its orchestrator stub died (Triton 2.51
    # leaves such a stream open forever); deploy/watchdog.py brings the orchestrator back
    max_upstream_silence_s: float = 30.0
    # how often the door asks upstream whether talking_head is ready; once it answers not ready (a drain, a reload)
    # the door closes its streams with no turn in flight (UNAVAILABLE): Triton 2.51 does not finish unloading a
    # model while a stream that used it is open, so idle streams would hold the drain to its exit timeout. 0: never
    ready_poll_s: float = 1.0


class QuotaExceeded(Exception):
    """A quota is used up: the message says which and its limit."""


@dataclass
class TokenBucket:
    """`rate` tokens a second up to `burst`; `take` spends one (or `amount`) or says there are not enough."""
    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(default=-1.0)
    stamp: float = 0.0

    def __post_init__(self):
        self.tokens = float(self.burst)
        self.stamp = self.clock()

    def _level(self, now: float) -> float:
        """The tokens it holds at `now`: what it had, refilled at `rate` since `stamp`, up to `burst`."""
        return min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)

    def take(self, amount: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = self._level(now)
        self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


@dataclass
class Usage:
    limits: Limits
    clock: Callable[[], float] = time.monotonic
    streams: int = 0
    turns: int = 0
    calls: int = 0
    requests: TokenBucket = field(init=False)
    audio: TokenBucket = field(init=False)  # microphone seconds
    registrations: TokenBucket = field(init=False)

    def __post_init__(self):
        self.requests = TokenBucket(self.limits.rate, self.limits.burst, self.clock)
        self.audio = TokenBucket(self.limits.mic_rate, self.limits.mic_burst_s, self.clock)
        self.registrations = TokenBucket(self.limits.registrations_per_hour / 3600, self.limits.registration_burst,
                                         self.clock)

    def spend(self, what: str) -> None:
        """One request's token from the bucket, or QuotaExceeded."""
        if not self.requests.take():
            raise QuotaExceeded(f"rate limit: {what} refused, more than {self.limits.rate:g} requests per second "
                                f"(burst {self.limits.burst}) for this API key; retry later")

    def hear(self, seconds: float, what: str) -> None:
        """A microphone chunk's seconds of audio from the audio bucket, or QuotaExceeded."""
        if not self.audio.take(seconds):
            raise QuotaExceeded(f"microphone limit: {what} ({seconds * 1000:.0f} ms of audio) refused, more than "
                                f"{self.limits.mic_rate:g} s of microphone audio a second (burst "
                                f"{self.limits.mic_burst_s:g} s) for this API key: send it as it is spoken (a "
                                "recording: one `turn` with all of its audio); retry later")

    def register(self) -> None:
        """One avatar registration, or QuotaExceeded."""
        if not self.registrations.take():
            raise QuotaExceeded(f"too many avatar registrations: more than {self.limits.registrations_per_hour:g} "
                                f"an hour (burst {self.limits.registration_burst}) for this API key; the avatar store "
                                "is shared by every client, so one may not cycle it; retry later")

    def open_stream(self) -> None:
        if self.streams >= self.limits.max_streams:
            raise QuotaExceeded(f"too many streams: {self.streams} open for this API key (limit "
                                f"{self.limits.max_streams}); close one first")
        self.streams += 1

    def close_stream(self) -> None:
        self.streams -= 1

    def start_turn(self) -> None:
        if self.turns >= self.limits.max_turns:
            raise QuotaExceeded(f"too many turns: {self.turns} in flight for this API key (limit "
                                f"{self.limits.max_turns}); wait for one to finish")
        self.turns += 1

    def end_turns(self, n: int = 1) -> None:
        self.turns -= n

    def start_call(self) -> None:
        if self.calls >= self.limits.max_calls:
            raise QuotaExceeded(f"too many calls: {self.calls} in flight for this API key (limit "
                                f"{self.limits.max_calls}); wait for one to finish")
        self.calls += 1

    def end_call(self) -> None:
        self.calls -= 1


class Quotas:
    """Usage by identity. Everything runs on the front door's one event loop: no locks."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._usage: dict[str, Usage] = {}

    def __getitem__(self, identity: str) -> Usage:
        u = self._usage.get(identity)
        if u is None:
            u = self._usage[identity] = Usage(self.limits, self.clock)
        return u
