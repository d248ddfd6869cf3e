"""ensemble/lru.py's BytesLRU, and the caches built on it (issue 15: bounded everything)."""
from __future__ import annotations

import numpy as np
import pytest

from ensemble import motion
from ensemble.lru import BytesLRU


def test_bytes_lru_evicts_the_least_recently_used_by_count_and_by_bytes():
    lru: BytesLRU[str, int] = BytesLRU(max_entries=3, max_bytes=100)
    assert lru.put("a", 1, 40) == [] and lru.put("b", 2, 40) == []
    assert lru.get("a") == 1  # a is now the most recently used
    assert lru.put("c", 3, 40) == ["b"]  # 120 bytes > 100: b goes
    assert lru.keys() == ["a", "c"] and lru.bytes == 80
    assert lru.put("c", 30, 10) == [] and lru.bytes == 50  # a new value for a key replaces its size
    assert lru.put("d", 4, 1) == [] and lru.put("e", 5, 1) == ["a"]  # 4 entries > 3: a goes
    assert lru.put("big", 6, 101) == ["c", "d", "e", "big"]  # too big alone: not kept, and the rest made room
    assert len(lru) == 0 and lru.bytes == 0 and lru.get("big") is None
    assert lru.put("f", 7, 5) == [] and lru.pop("f") == 7 and lru.pop("f") is None and lru.bytes == 0
    with pytest.raises(ValueError):
        BytesLRU(0, 10)


def test_feather_masks_are_bounded_in_bytes(monkeypatch):
    feathers = BytesLRU(64, 3 * 100 * 100 * 4)  # room for three 100 x 100 masks
    monkeypatch.setattr(motion, "_FEATHERS", feathers)
    masks = [motion._feather(100, 100, edge) for edge in range(2, 8)]
    assert feathers.bytes <= feathers.max_bytes and len(feathers) == 3
    assert motion._feather(100, 100, 7) is masks[-1]  # still cached
    assert masks[0].shape == (100, 100, 1) and not masks[0].flags.writeable
    assert masks[0][50, 50, 0] == 1 and masks[0][0, 50, 0] == 0
    np.testing.assert_array_equal(motion._feather(100, 100, 2), masks[0])  # evicted: computed again, the same
