"""Stage 3 (policy): blocked names get the configured block answer, cached like any other.

The lists are loaded before fork (heimdall/assembly.py), so their frozensets
are shared copy-on-write by every worker. A blocked answer is returned with
the blocking TTL, and the pipeline caches it, so repeated blocked queries are
served by the UDP hot path at cache-hit cost. A reload (SIGHUP, or a changed
mtime every HEIMDALL_BLOCKLIST_RELOAD_INTERVAL seconds) loads the lists in a
thread, swaps them, then drops every cached entry whose blocked state
changed, so it takes effect at once, also for cached names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from heimdall import cachekey, wire
from heimdall.blocklist import EMPTY, Blocklist, BlocklistManager
from heimdall.blockresponse import BlockResponder
from heimdall.cache import LABEL_KEYS, Cache
from heimdall.config import Config
from heimdall.outcome import Answer, How
from heimdall.wire import Query

log = logging.getLogger("heimdall.blocking")


class Blocking:
    def __init__(self, config: Config, manager: BlocklistManager, cache: Cache):
        self.manager = manager
        self.lists: Blocklist = manager.current
        self.cache = cache
        self.responder = BlockResponder(config.blocking_mode, config.blocking_ttl, config.blocking_custom_ip)
        self.ttl = config.blocking_ttl
        self.blocked = 0  # answered by this stage (hits on cached block answers are counted by label)
        self.cloaked = 0  # of which: allowed names whose CNAME chain led to a blocked one
        self.reloads = 0
        self.paused = False  # blocking disabled from the control API: nothing matches until resumed
        self.purger: Callable[[], int] | None = None  # with client groups: their purge (clientgroups.py)
        self._reloading: asyncio.Task | None = None
        self._again = False

    def check(self, data: bytes, q: Query) -> Answer | None:
        """The block answer for a blocked name, else None."""
        if not self.lists.match(data[12:q.qend - 4].lower()):
            return None
        reply = self.responder.respond(data, q.qend)
        if reply is None:
            return None
        self.blocked += 1
        return Answer(reply, How.BLOCKED, self.ttl)

    def check_chain(self, data: bytes, q: Query, reply: bytes) -> Answer | None:
        """CNAME cloaking: the block answer when the answer's CNAME chain passes through a blocked name.

        Runs on the miss path only (the result is cached, blocked, like any block answer).
        """
        try:
            targets = wire.cname_targets(reply)
        except wire.WireError:
            return None
        if not any(self.lists.match(t) for t in targets):
            return None
        block = self.responder.respond(data, q.qend)
        if block is None:
            return None
        self.blocked += 1
        self.cloaked += 1
        return Answer(block, How.BLOCKED, self.ttl)

    async def start(self) -> None:
        """A worker (re)started after the files changed must not serve the lists loaded before fork."""
        if self.lists.changed():
            log.info("list files changed since they were loaded before fork: reloading before serving")
            await self._reload()
        if self.lists.changed():  # forked again after a reload: the pre-fork lists are old
            self.request_reload()

    def request_reload(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            self._again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def poll(self, interval: float) -> None:
        """Reload when a list file's mtime changed, every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self.manager.current.changed():
                    self.request_reload()
            except Exception as exc:  # noqa: BLE001 - polling must survive anything
                log.error("blocklist check failed: %r", exc)

    async def _reload(self) -> None:
        """Load in a thread (the loop keeps answering), then swap and purge on the loop."""
        while True:
            self._again = False
            started = time.monotonic()
            ok = await asyncio.get_running_loop().run_in_executor(None, self.manager.reload)
            if ok:
                purged = 0 if self.paused else self.use(self.manager.current)
                self.reloads += 1
                log.info("blocklists reloaded in %.1fs: %d blocked, %d allowed; %d cached answers dropped",
                         time.monotonic() - started, self.manager.current.entries, self.manager.current.allow_entries, purged)
            if not self._again:
                return

    def set_paused(self, paused: bool) -> None:
        """Pause: every name is allowed, cached block answers go; resume: the lists and their answers return."""
        if paused != self.paused:
            self.paused = paused
            self.use(EMPTY if paused else self.manager.current)
            log.info("blocking %s", "paused" if paused else "resumed")

    def use(self, lists: Blocklist) -> int:
        """Answer from `lists` from now on; cached answers they change are dropped (how many)."""
        self.lists = lists
        return self.purger() if self.purger is not None else self.purge_cache(lists)

    def purge_cache(self, lists: Blocklist) -> int:
        """Drop cached entries whose blocked state differs under `lists`."""
        m = self.cache.map
        match = lists.match
        dropped = 0
        for key, e in list(m.items()):
            name = cachekey.qname(key)
            if (bool(name) and match(name)) != LABEL_KEYS[e.lid][2]:
                del m[key]
                dropped += 1
        return dropped
