"""A thread-safe least-recently-used map bounded by entry count and by bytes (issue 15: bounded everything)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BytesLRU(Generic[K, V]):
    """At most `max_entries` values and `max_bytes` bytes of them (each value's size is given to `put`); the least
    recently used (`put` or `get`) goes first. A value larger than `max_bytes` alone is not kept."""

    def __init__(self, max_entries: int | None, max_bytes: int | None) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_entries = max_entries  # None: unbounded
        self.max_bytes = max_bytes  # None: unbounded
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V, size: int) -> list[K]:
        """Keep `value` as the most recently used; the keys evicted to make room (`key` itself if it is too big)."""
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (value, size)
            self._bytes += size
            evicted = []
            while self._entries and (
                    (self.max_entries is not None and len(self._entries) > self.max_entries)
                    or (self.max_bytes is not None and self._bytes > self.max_bytes)):
                old, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                evicted.append(old)
            return evicted

    def pop(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return None
            self._bytes -= entry[1]
            return entry[0]

    def keys(self) -> list[K]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def bytes(self) -> int:
        """Bytes of the values held (as given to `put`)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
