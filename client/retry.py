"""Retries for turns the server refused before sending anything, with backoff, jitter and a budget.

A turn is retried only when the server refused it as UNAVAILABLE-class (session cap, queue full,
shutting down) and no event of it reached the client: a turn that delivered text, audio or video is
never repeated. Retries are limited per turn (`max_attempts`) and per client by a token budget
that earns `budget_ratio` tokens per first attempt, so a struggling server is not hammered.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# How Triton 2.51 and our orchestrator word a refusal worth retrying later (UNAVAILABLE class). The last:
# what Triton answers (NOT_FOUND) while `talking_head` unloads during a graceful stop (deploy.server drain).
RETRYABLE_MARKERS = ("server busy", "server is shutting down", "exceeds maximum queue size",
                     "request timeout expired", "server is stopping", "has no available versions")


def is_retryable_refusal(message: str) -> bool:
    text = message.lower()
    return any(m in text for m in RETRYABLE_MARKERS)


@dataclass
class RetryPolicy:
    max_attempts: int = 3  # attempts per turn, the first included
    base_delay_s: float = 0.2  # backoff before retry n is base * 2**(n-1), capped, with full jitter
    max_delay_s: float = 2.0
    budget_ratio: float = 0.2  # retry tokens earned per first attempt
    budget_min: float = 3.0  # tokens available from the start (and the floor of the bucket's size)
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    _tokens: float = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._tokens = self.budget_min

    def record_first_attempt(self) -> None:
        with self._lock:
            self._tokens = min(self._tokens + self.budget_ratio, max(self.budget_min, 10 * self.budget_min))

    def try_spend(self) -> bool:
        with self._lock:
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def backoff(self, retry: int) -> None:
        """Wait before retry number `retry` (1, 2, ...): full jitter over an exponential cap."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1))
        self.sleep(self.rng.uniform(0, cap))
