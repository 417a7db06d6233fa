"""The zone-local cache (storage/cache.py): TTL, LRU bound, fills that raced an invalidation,
versions, the change-feed gate; and which requests the response cache takes (cache_key)."""

from __future__ import annotations

import pytest

from crosszone.dataplane.gateway.keys import ApiKey, KeyCache
from crosszone.dataplane.gateway.response_cache import cache_key
from crosszone.storage.cache import LocalCache


def make(ttl: float = 10.0, **kwargs: object) -> tuple[LocalCache[str], list[float]]:
    now = [0.0]
    return LocalCache("c", ttl, clock=lambda: now[0], **kwargs), now  # type: ignore[arg-type]


def put(cache: LocalCache[str], key: str, value: str,
        version: tuple[int, str] | None = None, **kwargs: float) -> bool:
    with cache.reading(key) as read:
        return cache.fill(read, value, version, **kwargs)


def test_entries_live_for_ttl_from_the_start_of_their_read() -> None:
    cache, now = make(ttl=2.0)
    with cache.reading("k") as read:
        now[0] = 1.5  # a slow read: its age counts from when it started
        assert cache.fill(read, "v")
    assert cache.get("k") == "v"
    now[0] = 1.99
    assert cache.get("k") == "v"
    now[0] = 2.0
    assert cache.get("k") is None and len(cache) == 0
    assert put(cache, "short", "v", ttl=0.5) and cache.get("short") == "v"
    now[0] = 2.5
    assert cache.get("short") is None  # a per-entry life shorter than the cache's
    assert (cache.hits, cache.misses) == (3, 2)


def test_least_recently_used_entry_goes_first() -> None:
    cache, _ = make(max_entries=2)
    put(cache, "a", "1")
    put(cache, "b", "2")
    assert cache.get("a") == "1"  # a is now the most recently used
    put(cache, "c", "3")
    assert cache.get("b") is None
    assert cache.get("a") == "1" and cache.get("c") == "3"


def test_fill_that_raced_an_invalidation_is_dropped() -> None:
    cache, _ = make()
    with cache.reading("k") as read:
        cache.discard("k")  # changed while the read was in flight, version unknown
        assert not cache.fill(read, "old", (1, "a"))
    assert cache.get("k") is None
    with cache.reading("k") as read:
        cache.discard("other")  # another key's change does not matter
        assert cache.fill(read, "v", (1, "a"))
    with cache.reading("k") as slow, cache.reading("k") as fast:
        cache.discard("k", (5, "b"))  # the feed announces version 5
        assert not cache.fill(slow, "older", (4, "z"))  # read before the change: dropped
        assert cache.fill(fast, "current", (5, "b"))  # read the announced version: kept
    assert cache.get("k") == "current"
    with cache.reading("k") as read:
        cache.clear()
        assert not cache.fill(read, "v", (9, "a"))
    assert cache._reads == {}  # every read unregistered


def test_discard_keeps_an_entry_at_least_as_new_as_the_change() -> None:
    cache, _ = make()
    put(cache, "k", "mine", (5, "a"))
    cache.discard("k", (5, "a"))  # its own write coming back through the feed
    cache.discard("k", (4, "z"))  # an older write that lost last-writer-wins
    assert cache.get("k") == "mine"
    cache.discard("k", (5, "b"))  # same HLC, later zone: newer
    assert cache.get("k") is None
    put(cache, "u", "unversioned")
    cache.discard("u", (1, "a"))
    assert cache.get("u") is None
    generation = cache.generation
    put(cache, "k", "v", (7, "a"))
    cache.discard("k")
    assert cache.get("k") is None and cache.generation == generation + 1


def test_cache_that_follows_the_feed_fills_only_while_it_is_followed() -> None:
    cache, _ = make(follows_feed=True)
    assert not put(cache, "k", "v")  # no feed yet: a change could go unseen
    cache.feed_resumed()
    assert put(cache, "k", "v") and cache.get("k") == "v"
    with cache.reading("j") as read:
        cache.feed_lost()
        assert not cache.fill(read, "v")
    assert cache.get("k") is None and not put(cache, "k", "v")
    assert "feed=down" in repr(cache)
    off, _ = make(ttl=0.0)
    assert not put(off, "k", "v") and off.get("k") is None  # TTL 0: caches nothing


def test_key_cache_is_a_local_cache_with_its_revocation_api() -> None:
    now = [0.0]
    cache = KeyCache(2.0, clock=lambda: now[0])
    key = ApiKey("key_1", "k", "h", 1)
    with cache.reading("key_1") as read:
        cache.invalidate(["key_1"])  # a revocation landed while the read was in flight
        assert not cache.fill(read, key, (1, "a"))
    with cache.reading("key_1") as read:
        assert cache.fill(read, key, (1, "a"))
    cache.discard("key_1", (2, "b"))  # the change feed: the record changed in some zone
    assert cache.get("key_1") is None
    cache.put(key, 0.0, cache.generation)
    cache.invalidate()
    assert cache.get("key_1") is None


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.mark.parametrize("change", [
    {"temperature": 0.7},  # sampled
    {"temperature": None},  # default temperature 1
    {"stream": True},
    {"n": 2},
    {"temperature": True},  # not a number
    {"model": None},
])
def test_only_deterministic_single_unstreamed_requests_are_cacheable(change: dict[str, object],
                                                                     ) -> None:
    doc = {k: v for k, v in {**CHAT, **change}.items() if v is not None}
    assert cache_key("chat", doc) is None


def test_cache_key_is_the_canonical_request_less_what_does_not_change_the_answer() -> None:
    key = cache_key("chat", CHAT)
    assert key is not None and len(key) == 64
    reordered = dict(reversed(list(CHAT.items())))
    extra = {**CHAT, "user": "u1", "stream": False, "stream_options": {"include_usage": True},
             "metadata": {"a": "b"}, "n": 1}
    assert cache_key("chat", reordered) == key == cache_key("chat", extra)
    assert cache_key("completions", CHAT) != key
    assert cache_key("chat", {**CHAT, "model": "other"}) != key
    assert cache_key("chat", {**CHAT, "max_tokens": 5}) != key
    seeded = {**CHAT, "temperature": 0.9, "seed": 7}
    assert cache_key("chat", seeded) not in (None, key)
    assert cache_key("chat", {**seeded, "seed": 8}) != cache_key("chat", seeded)
