"""The answer cache's bounds without a server: bytes in all, and each client's share of them."""
from __future__ import annotations

from ensemble.answer_cache import AnswerCache, CacheKey
from export.contract.events import Event

MB = 1024**2


def answer(mb: float) -> list[Event]:
    return [Event("video", {"i": 0}, frame=b"\xff" * int(mb * MB))]


def key(text: str, seed: int = 0) -> CacheKey:
    return CacheKey(text, "avatar", (seed,), "models")


def test_one_client_cannot_flush_what_others_cached():
    cache = AnswerCache(max_bytes=100 * MB, owner_share=4)  # 25 MB a client
    for i in range(3):
        assert cache.put(key(f"victim-{i}"), answer(5), owner="victim")
    for seed in range(200):  # 10 MB answers under ever new seeds
        assert cache.put(key("hello", seed), answer(10), owner="mallory")
    assert all(cache.get(key(f"victim-{i}")) is not None for i in range(3))
    assert [cache.get(key("hello", s)) is not None for s in (197, 198, 199)] == [False, True, True]  # her last two
    assert cache.bytes == 35 * MB + len(answer(0)[0].to_json()) * 5


def test_an_answer_larger_than_a_clients_share_is_not_kept():
    cache = AnswerCache(max_bytes=100 * MB, owner_share=4)
    assert not cache.put(key("hello"), answer(26), owner="a") and len(cache) == 0
    assert cache.put(key("hello"), answer(24), owner="a") and len(cache) == 1


def test_many_clients_still_share_the_cache_least_recently_used_first():
    cache = AnswerCache(max_bytes=100 * MB, owner_share=4)
    for c in range(12):
        assert cache.put(key(f"q{c}"), answer(10), owner=f"client-{c}")
    assert cache.bytes <= 100 * MB and len(cache) == 9
    assert cache.get(key("q0")) is None and cache.get(key("q11")) is not None


def test_clients_at_their_share_make_room_from_themselves_not_from_one_that_holds_less():
    """Each at its share, five clients hold more than the cache: the room comes from the clients holding the most,
    so the one that holds a little keeps it (before, least recently used first, its answer went first)."""
    cache = AnswerCache(max_bytes=100 * MB, owner_share=4)
    assert cache.put(key("hello"), answer(8), owner="victim")
    for c in range(5):
        for seed in range(3):
            cache.put(key("hello", 100 * c + seed + 1), answer(12), owner=f"mallory-{c}")
    assert cache.get(key("hello")) is not None and cache.bytes <= 100 * MB
