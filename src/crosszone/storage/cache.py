"""A zone-local cache of zone-store records (the seed's cache layer), one per use and process.

:class:`LocalCache` keeps records of one collection for at most ``ttl`` seconds, counted from
the start of the read that fetched them, and at most ``max_entries`` of them (least recently
used out first). Two rules keep it from holding a value the store has since replaced:

* a fill names the read it comes from: ``with cache.reading(key) as read: ...;
  cache.fill(read, value, version)``. An invalidation of that key while the read is in flight
  marks it, and the fill is dropped unless what it read is at least as new as the change
  announced (versions are last-writer-wins ``(hlc, origin)`` pairs); a ``clear`` drops
  every fill in flight;
* ``discard(key, version)`` keeps an entry at least as new as ``version`` (the cache's own write
  coming back through the feed, or an older write that lost last-writer-wins), and drops it
  otherwise; without a version it always drops it.

A cache made with ``follows_feed`` holds entries only while a
:class:`~crosszone.storage.cache_follower.ChangeFollower` follows its zone store's change feed
(after :meth:`LocalCache.feed_resumed`; :meth:`LocalCache.feed_lost` clears it and stops fills),
so every change after a fill's read reaches it. One without (API keys) is bounded by its TTL
and told of changes explicitly; the feed is an extra.

Cached values are shared between readers: treat them as read-only.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from crosszone.storage.changes import Version

V = TypeVar("V")


@dataclass(slots=True, eq=False)
class Read:
    """A read whose result may fill the cache; what was invalidated while it was in flight."""

    key: str
    started: float
    dropped: bool = False  # cleared, or invalidated without a version
    newest: Version | None = None  # newest version announced by an invalidation


@dataclass(frozen=True, slots=True)
class Cached(Generic[V]):
    value: V
    version: Version | None
    expires: float  # on the cache's clock


class LocalCache(Generic[V]):
    """Records of one collection (see the module docstring)."""

    def __init__(self, name: str, ttl: float, *, max_entries: int = 10_000,
                 follows_feed: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.ttl = ttl
        self.max_entries = max_entries
        self.follows_feed = follows_feed
        self.feed_live = False
        self.clock = clock
        self.generation = 0  # moves on every invalidation and clear
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, Cached[V]] = OrderedDict()
        self._reads: dict[str, list[Read]] = {}

    def __repr__(self) -> str:
        feed = f", feed={'live' if self.feed_live else 'down'}" if self.follows_feed else ""
        return (f"{type(self).__name__}({self.name}, ttl={self.ttl:g}, "
                f"entries={len(self._entries)}, hits={self.hits}, misses={self.misses}, "
                f"generation={self.generation}{feed})")

    def __len__(self) -> int:
        return len(self._entries)

    # ---------------------------------------------------------------- reads
    def entry(self, key: str) -> Cached[V] | None:
        """The live entry of ``key`` (expired ones are dropped), counted as a hit or miss."""
        found = self._entries.get(key)
        if found is not None and self.clock() >= found.expires:
            del self._entries[key]
            found = None
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def get(self, key: str) -> V | None:
        found = self.entry(key)
        return None if found is None else found.value

    # ---------------------------------------------------------------- fills
    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[Read]:
        """Register a read of ``key`` before it starts; :meth:`fill` inside the block."""
        read = Read(key, self.clock())
        self._reads.setdefault(key, []).append(read)
        try:
            yield read
        finally:
            reads = self._reads.get(key, [])
            with contextlib.suppress(ValueError):
                reads.remove(read)
            if not reads:
                self._reads.pop(key, None)

    def fill(self, read: Read, value: V, version: Version | None = None, *,
             ttl: float | None = None) -> bool:
        """Keep what ``read`` found (``ttl``: a shorter life for this entry); False when it
        was dropped because something newer was announced while it was in flight."""
        if self.ttl <= 0 or (self.follows_feed and not self.feed_live) or read.dropped:
            return False
        if read.newest is not None and (version is None or version < read.newest):
            return False
        life = self.ttl if ttl is None else min(self.ttl, ttl)
        if life <= 0:
            return False
        self._keep(read.key, Cached(value, version, read.started + life))
        return True

    def _keep(self, key: str, entry: Cached[V]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    # ---------------------------------------------------------------- invalidation
    def discard(self, key: str, version: Version | None = None) -> None:
        """``key`` changed (to ``version``, when known): drop what may be older."""
        self.generation += 1
        found = self._entries.get(key)
        if found is not None and (version is None or found.version is None
                                  or found.version < version):
            del self._entries[key]
        for read in self._reads.get(key, ()):
            if version is None:
                read.dropped = True
            elif read.newest is None or read.newest < version:
                read.newest = version

    def clear(self) -> None:
        """Forget every entry and drop every fill in flight."""
        self.generation += 1
        self._entries.clear()
        for reads in self._reads.values():
            for read in reads:
                read.dropped = True

    def feed_lost(self) -> None:
        """The change feed stopped answering: changes may go unseen from now on."""
        self.clear()
        self.feed_live = False

    def feed_resumed(self) -> None:
        """The change feed (re)started: every change after now will be seen."""
        self.clear()
        self.feed_live = True

