"""What one instance of a fleet sharing Redis tells the others: its cache was flushed, its lists reloaded.

Every worker of every instance subscribes (heimdall/sharedcache.py: one
pub/sub channel under the key prefix). Workers of one instance share an
instance id and ignore each other: they act on every change together anyway
(the control API reaches all of them, and so does SIGHUP).

* A cache flush (`POST /api/cache/flush`) first removes the fleet's keys from
  Redis, or the next miss would bring the flushed answers back from there,
  then tells the others, whose every worker empties its cache.
* A list reload (SIGHUP, `POST /api/lists/refresh`) tells the others, whose
  workers reload their lists (the leader downloads the list URLs first), so a
  name blocked here stops being answered there. A reload that a message
  caused tells no one: instances never echo each other.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from heimdall.sharedcache import FLUSH, LISTS

if TYPE_CHECKING:
    from heimdall.cache import Cache
    from heimdall.sharedcache import SharedCache

log = logging.getLogger("heimdall.fleet")


class Fleet:
    def __init__(self, redis: "SharedCache", cache: "Cache", reload_lists: Callable[[], None]) -> None:
        self.redis = redis
        self.cache = cache
        self.reload_lists = reload_lists  # this worker's lists, as on SIGHUP (and no message sent)

    def start(self) -> None:
        self.redis.subscribe_invalidate(self.received)

    def received(self, kind: str) -> None:
        if kind == FLUSH:
            self.cache.clear()
            log.info("cache flushed: another instance of the fleet flushed its own")
        elif kind == LISTS:
            self.reload_lists()
            log.info("reloading lists: another instance of the fleet reloaded its own")

    async def flushed(self) -> None:
        removed = await self.redis.flush_keys()
        if await self.redis.publish_invalidate(FLUSH):
            log.info(f"cache flush sent to the fleet; {removed} answers removed from Redis")

    async def lists_reloaded(self) -> None:
        await self.redis.publish_invalidate(LISTS)
