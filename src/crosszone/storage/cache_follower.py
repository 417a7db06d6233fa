"""ChangeFollower: keeps a process's zone-local caches in step with its zone store.

It long-polls the store's change feed (``GET /changes``, :mod:`crosszone.storage.changes`)
and discards, in the cache of the change's collection, the key that changed -- whether a
gateway of this zone wrote it, a two-phase commit did, or replication brought it from another
zone. When the feed cannot be followed (the store does not answer) every cache is cleared, and
caches that rely on the feed take no fills until it answers again; when the feed says
``reset`` (store restarted, subscriber fell behind, snapshot imported) every cache is cleared
and follows on from the feed's current position.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from crosszone.errors import StoreError
from crosszone.storage.cache import LocalCache
from crosszone.storage.client import StoreClient
from crosszone.tasks import cancel_and_wait

log = logging.getLogger("crosszone.cache")


class ChangeFollower:
    """Follows ``store``'s change feed for ``caches`` (collection -> cache)."""

    def __init__(self, store: StoreClient, caches: Mapping[str, LocalCache[Any]], *,
                 wait: float = 10.0, retry: float = 1.0) -> None:
        self.store = store
        self.caches = dict(caches)
        self.wait = wait
        self.retry = retry
        self.epoch: str | None = None
        self.seq: int | None = None
        self.live = False
        self.invalidations = 0
        self.resets = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (f"ChangeFollower({self.store.zone}, live={self.live}, seq={self.seq}, "
                f"caches={sorted(self.caches)}, invalidations={self.invalidations})")

    async def run_cycle(self) -> str:
        """One long-poll of the feed, and what it changed in the caches."""
        try:
            answer = await self.store.changes(self.epoch, self.seq, wait=self.wait)
        except StoreError as exc:
            return self._lost(str(exc))
        if answer.reset:
            self.resets += 1
            for cache in self.caches.values():
                cache.feed_resumed()
            self.epoch, self.seq, self.live = answer.epoch, answer.seq, True
            return (f"following the change feed of zone {self.store.zone} from "
                    f"{answer.epoch}/{answer.seq}: caches cleared")
        dropped = 0
        for change in answer.changes:
            target = self.caches.get(change.collection)
            if target is not None:
                target.discard(change.key, change.version)
                dropped += 1
        self.seq = answer.seq
        self.invalidations += dropped
        return (f"{len(answer.changes)} change(s) up to {answer.seq}, {dropped} of them "
                "in cached collections")

    def _lost(self, why: str) -> str:
        if not self.live:
            return f"change feed of zone {self.store.zone} still not answering: {why}"
        self.live = False
        for cache in self.caches.values():
            cache.feed_lost()
        return f"change feed of zone {self.store.zone} lost ({why}): caches cleared"

    async def run(self) -> None:
        """Follow until cancelled; log when the feed is lost or (re)started."""
        while True:
            before = (self.live, self.resets)
            try:
                said = await self.run_cycle()
            except Exception as exc:  # a bug must not leave caches live but unfollowed
                log.exception("following the change feed failed")
                said = self._lost(f"unexpected {type(exc).__name__}: {exc}")
            if (self.live, self.resets) != before:
                log.log(logging.INFO if self.live else logging.WARNING, "%s", said)
            if not self.live:
                await asyncio.sleep(self.retry)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="cache-follower")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
