"""Stage 3 (policy): blocked names get the configured block answer, cached like any other.

The lists are loaded before fork (heimdall/assembly.py), so their frozensets
are shared copy-on-write by every worker. A blocked answer is returned with
the blocking TTL, and the pipeline caches it, so repeated blocked queries are
served by the UDP hot path at cache-hit cost. A reload (SIGHUP, or a changed
mtime every HEIMDALL_BLOCKLIST_RELOAD_INTERVAL seconds) loads the lists in a
thread, swaps them, then drops every cached entry whose blocked state
changed, so it takes effect at once, also for cached names.

Lists subscribed by URL (heimdall/subscriptions.py) are downloaded by one
worker only, the leader (worker 0, which also serves the HTTP API): it checks
each URL when due, in a thread, and writes a changed list to its saved copy
under the state directory; then it reloads, and every other worker, which
looks at the saved copies' mtimes each second, reloads from disk. So N
workers make one download per refresh, and no query waits for one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, TypeVar

from heimdall import cachekey, wire
from heimdall.blocklist import EMPTY, Blocklist, BlocklistManager
from heimdall.blockresponse import BlockResponder
from heimdall.cache import LABEL_KEYS, Cache
from heimdall.clientgroups import DEFAULT_GROUP
from heimdall.config import Config
from heimdall.outcome import Answer, How
from heimdall.wire import Query

log = logging.getLogger("heimdall.blocking")

COPY_POLL_INTERVAL = 1.0  # how often a worker that does not download looks for new saved copies
T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in a daemon thread: the loop keeps answering, and a download under way never
    holds up the process's exit (a thread pool's threads would be joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            result: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            result = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *result)
        except RuntimeError:  # the loop closed meanwhile: nobody is waiting
            pass

    threading.Thread(target=run, name="heimdall-lists", daemon=True).start()
    return await future


class Blocking:
    def __init__(self, config: Config, manager: BlocklistManager, cache: Cache, leader: bool = True):
        self.manager = manager
        self.leader = leader  # this worker downloads the list URLs (worker 0)
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
        self._fetching = asyncio.Lock()  # one download round at a time (timer, API, SIGHUP)
        self._refreshing: asyncio.Task | None = None

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
        """Reload when a list file's mtime changed, every `interval` seconds (saved copies of
        URLs are followed by follow_copies or, in the leader, by its own downloads)."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self.manager.current.changed(copies=False):
                    self.request_reload()
            except Exception as exc:  # noqa: BLE001 - polling must survive anything
                log.error("blocklist check failed: %r", exc)

    async def fetch_lists(self) -> dict[str, str]:
        """Download every list URL now (url -> result), in a thread; nothing is reloaded here."""
        if self.manager.subscriptions is None or not self.manager.urls:
            return {}
        async with self._fetching:
            return await in_daemon_thread(self.manager.fetch, True)

    async def refresh_forever(self) -> None:
        """The leader's task: download each URL when it is due; reload when a saved copy changed."""
        subs = self.manager.subscriptions
        assert subs is not None
        subs.adopt_saved(self.manager.urls)  # a restarted worker 0 goes on from what is on disk
        while True:
            try:
                wait = subs.seconds_until_due(self.manager.urls)
                if wait > 0:
                    await asyncio.sleep(min(wait, 1.0))  # the URLs may change (SIGHUP with a config file)
                    continue
                async with self._fetching:
                    await in_daemon_thread(self.manager.fetch, False)
                if self.manager.copies_changed():
                    self.request_reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - refreshing must survive anything
                log.error("list refresh failed: %r", exc)
                await asyncio.sleep(1.0)

    async def follow_copies(self, interval: float = COPY_POLL_INTERVAL) -> None:
        """The other workers' task: reload when the leader replaced a saved copy."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self.manager.copies_changed():
                    self.request_reload()
            except Exception as exc:  # noqa: BLE001 - polling must survive anything
                log.error("saved list copies check failed: %r", exc)

    def on_sighup(self) -> None:
        """Reload the lists; the leader downloads the URLs first (the others follow its copies)."""
        subs = self.manager.subscriptions
        if not self.leader and subs is not None and not all(subs.store.has_copy(u) for u in self.manager.urls):
            # a URL new to the config: the leader downloads it, and follow_copies reloads then
            log.debug("reload waits for the first download of a new list URL")
            return
        if not (self.leader and self.manager.urls and subs is not None):
            self.request_reload()
            return
        if self._refreshing is not None and not self._refreshing.done():
            return  # a download round is under way; it reloads when done
        self._refreshing = asyncio.get_running_loop().create_task(self._fetch_then_reload())

    async def _fetch_then_reload(self) -> None:
        try:
            await self.fetch_lists()
        except Exception as exc:  # noqa: BLE001 - the files are reloaded all the same
            log.error("list download failed: %r", exc)
        self.request_reload()

    def list_figures(self) -> dict[str, dict]:
        """Per-URL figures for /metrics: the leader's; the other workers report none (no double count)."""
        subs = self.manager.subscriptions
        if not self.leader or subs is None:
            return {}
        return subs.snapshot(self.manager.urls)

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

    def pause(self, paused: Callable[[str], bool]) -> None:
        """The control API's pause: this stage serves the clients in no group."""
        self.set_paused(paused(DEFAULT_GROUP))

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
