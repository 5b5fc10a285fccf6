"""Issue 3 wired into the server: blocking, rate limiting, metrics/health/stats over HTTP, query log.

`prepare(config)` runs once before fork: it loads the blocklists (so their
frozensets' pages are shared copy-on-write; `gc.freeze()` keeps the collector
from touching them) and checks the blocking settings. The `Setup` it returns
runs in every worker and installs `Features` into that worker's DnsServer
through its hooks (see heimdall/server.py's module docstring):

* `admit`: RateLimiter.allow on the packed client address; a limited query is
  answered REFUSED or dropped (`server.refuse_limited`).
* `policy`: on the slow path only (cache misses, TCP, unusual queries), match
  the lower-cased wire qname; a blocked name gets BlockResponder's answer, and
  that answer is also stored in the worker's cache (an Entry whose label says
  "blocked"), so repeated blocked queries are served by the UDP fast path at
  cache-hit cost. A reload (SIGHUP, or a changed mtime every
  HEIMDALL_BLOCKLIST_RELOAD_INTERVAL seconds) loads the lists in a thread,
  swaps them, then drops every cached entry whose blocked state changed, so it
  takes effect at once, also for cached names.
* `observe` / `time_hits` / `pool.observe`: counting for metrics and the
  query log. The fast path itself only adds to a per-label list
  (`stats.hit_labels[entry.lid] += 1`) and times each batch; `refresh()`
  turns the server's plain ints into one `metrics.Stats` about once a second.
* HTTP: with one worker the API runs on the worker's loop and reads live
  figures; with N workers every worker publishes a snapshot file each second
  and worker 0 serves the API from the sum of the files.
* Query log: one QueryLog per worker (same path, O_APPEND batches); while it
  is on, the fast path is off so that every query is logged.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from bisect import bisect_left
from collections import defaultdict
from typing import TYPE_CHECKING

from heimdall import metrics, wire
from heimdall.blocklist import EMPTY, Blocklist, BlocklistError, BlocklistManager
from heimdall.blockresponse import BlockResponder, BlockResponseError
from heimdall.cache import LABEL_KEYS, Entry, label_id
from heimdall.config import Config
from heimdall.httpapi import Health, HttpApi, health_from_snapshot
from heimdall.metrics import QUERY_BUCKETS, SnapshotStore
from heimdall.querylog import QueryLog
from heimdall.ratelimit import RateLimitConfig, RateLimiter

if TYPE_CHECKING:
    from heimdall.server import DnsServer

log = logging.getLogger("heimdall.features")

WORKER_INDEX_ENV = "HEIMDALL_WORKER_INDEX"  # set by the supervisor in each forked worker
PUBLISH_INTERVAL = 1.0


class FeatureError(Exception):
    """A feature could not start (unreadable list, HTTP address taken); str() is one line."""


def setup_logging() -> None:
    """The feature modules log through `logging`; print like server.log() does."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("heimdall[%(process)d]: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def wanted(config: Config) -> bool:
    return bool(config.blocklists or config.allowlist or config.enable_rate_limiting
                or config.http_bind_addr is not None or config.query_log)


def prepare(config: Config):
    """Before fork: load lists, check settings; returns the per-worker setup (or None)."""
    if not wanted(config):
        return None
    setup_logging()
    try:
        BlockResponder(config.blocking_mode, config.blocking_ttl, config.blocking_custom_ip)
    except BlockResponseError as exc:
        raise FeatureError(str(exc)) from None
    manager = None
    if config.blocklists or config.allowlist:
        manager = BlocklistManager(config.blocklists, config.allowlist)
        started = time.monotonic()
        try:
            manager.load()
        except BlocklistError as exc:
            raise FeatureError(str(exc)) from None
        log.info("blocklists ready in %.1fs", time.monotonic() - started)
    store_dir = None
    if config.worker_threads > 1 and config.http_bind_addr is not None:
        store_dir = tempfile.mkdtemp(prefix="heimdall-stats-")
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(store_dir, ignore_errors=True))
    gc.collect()
    gc.freeze()  # the lists (and everything loaded so far) stay shared after fork

    def setup(server: "DnsServer"):
        return Features(config, server, manager, store_dir).install()

    return setup


class Features:
    """One worker's blocking, rate limiting, metrics and query log."""

    def __init__(self, config: Config, server: "DnsServer", manager: BlocklistManager | None,
                 store_dir: str | None) -> None:
        self.config = config
        self.server = server
        self.manager = manager
        self.lists: Blocklist = manager.current if manager is not None else EMPTY
        self.responder = BlockResponder(config.blocking_mode, config.blocking_ttl, config.blocking_custom_ip)
        self.index = int(os.environ.get(WORKER_INDEX_ENV, "0") or 0)
        self.store = SnapshotStore(store_dir) if store_dir else None
        self.mstats = metrics.Stats()
        self.slow: defaultdict[tuple[str, int, int], int] = defaultdict(int)  # slow-path replies by label
        self.blocked_slow = 0
        self._blocked_now = False  # set by policy for the query being handled
        self.limiter: RateLimiter | None = None
        self.qlog: QueryLog | None = None
        self.api: HttpApi | None = None
        self.reloads = 0
        self._reloading: asyncio.Task | None = None
        self._again = False
        self._tasks: list[asyncio.Task] = []

    # --- installation ---

    async def install(self) -> None:
        cfg, srv = self.config, self.server
        if self.manager is not None:
            srv.policy = self.policy
            if self.lists.changed():  # a worker (re)started after the files changed: not the pre-fork lists
                log.info("list files changed since they were loaded before fork: reloading before serving")
                await self._reload(force=False)
            if self.lists.changed():  # a worker forked again after a reload: the pre-fork lists are old
                self.request_reload(force=False)
        if cfg.enable_rate_limiting:
            n = cfg.worker_threads
            self.limiter = RateLimiter(RateLimitConfig(
                per_ip_qps=cfg.queries_per_second_per_ip, per_ip_burst=cfg.burst_size_per_ip,
                global_qps=cfg.global_queries_per_second / n, aggregate=cfg.rate_limit_aggregate),
                now=time.monotonic())
            allow, clock = self.limiter.allow, time.monotonic
            srv.admit = lambda ip: allow(ip, clock())
            srv.refuse_limited = cfg.rate_limit_action == "refused"
        if cfg.query_log:
            self.qlog = QueryLog(cfg.query_log).start()
            srv.fast_ok = False  # every query must reach observe() to be logged
        metrics_on = cfg.http_bind_addr is not None
        if metrics_on or self.qlog is not None:
            srv.observe = self.observe
        if metrics_on:
            srv.time_hits = self.mstats.observe_hits
            srv.pool.observe = self.upstream_observe
        srv.reload_hooks.append(self.on_sighup)
        srv.stop_hooks.append(self.stop)
        loop = asyncio.get_running_loop()
        if self.manager is not None and cfg.blocklist_reload_interval > 0:
            self._tasks.append(loop.create_task(self._poll_lists(cfg.blocklist_reload_interval)))
        if self.store is not None:
            self._tasks.append(loop.create_task(
                metrics.publish_forever(self.mstats, self.store, PUBLISH_INTERVAL, self.refresh)))
        if metrics_on and self.index == 0:
            await self._start_http()

    async def _start_http(self) -> None:
        addr = self.config.http_bind_addr
        if self.store is not None:
            store = self.store
            self.api = HttpApi(store.merged, lambda: health_from_snapshot(store.merged()), addr.host, addr.port)
        else:
            self.api = HttpApi(self.live_snapshot, self.health, addr.host, addr.port)
        try:
            await self.api.start()
        except OSError as exc:
            self.api = None
            reason = "address already in use" if exc.errno == 98 else (exc.strerror or str(exc))
            raise FeatureError(f"cannot bind HTTP API {addr} (HEIMDALL_HTTP_BIND_ADDR): {reason}") from None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.api is not None:
            await self.api.stop()
        if self.store is not None:
            self.store.remove(os.getpid())
        if self.qlog is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.qlog.close, 5.0)

    # --- blocking ---

    def policy(self, data: bytes, q: wire.Query) -> bytes | None:
        """Slow path: the block answer for a blocked name (also cached for the fast path), else None."""
        if not self.lists.match(data[12:q.qend - 4].lower()):
            return None
        reply = self.responder.respond(data, q.qend)
        if reply is None:
            return None
        self.blocked_slow += 1
        self._blocked_now = True
        ttl = self.config.blocking_ttl
        if ttl > 0:
            entry = Entry(reply[2:12], reply[q.qend:], q.qend, int(time.monotonic()), ttl, (),
                          label_id(q.qtype, reply[3] & wire.RCODE_MASK, True))
            self.server.cache.put(wire.cache_key(data, q, False), entry)
        return reply

    def on_sighup(self) -> None:
        if self.qlog is not None:
            self.qlog.reopen()
        if self.manager is not None:
            self.request_reload(force=True)

    def request_reload(self, force: bool) -> None:
        if self._reloading is not None and not self._reloading.done():
            self._again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload(force))

    async def _poll_lists(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self.lists.changed():
                    self.request_reload(force=False)
            except Exception as exc:  # noqa: BLE001 - polling must survive anything
                log.error("blocklist check failed: %r", exc)

    async def _reload(self, force: bool) -> None:
        """Load in a thread (the loop keeps answering), then swap and purge on the loop."""
        mgr = self.manager
        assert mgr is not None
        while True:
            self._again = False
            started = time.monotonic()
            ok = await asyncio.get_running_loop().run_in_executor(None, mgr.reload)
            if ok:
                self.lists = mgr.current
                purged = self.purge_cache(self.lists)
                self.reloads += 1
                log.info("blocklists reloaded in %.1fs: %d blocked, %d allowed; %d cached answers dropped",
                         time.monotonic() - started, self.lists.entries, self.lists.allow_entries, purged)
            if not self._again:
                return

    def purge_cache(self, lists: Blocklist) -> int:
        """Drop cached entries whose blocked state differs under `lists`."""
        m = self.server.cache.map
        labels = LABEL_KEYS
        match = lists.match
        dropped = 0
        for key, e in list(m.items()):
            off = 11 if key[0] > 1 else 10  # b"T"/b"X"-prefixed keys; else flags byte 0/1 first
            try:
                i = off
                while key[i]:
                    i += key[i] + 1
                blocked = match(key[off:i + 1])
            except IndexError:
                blocked = False
            if blocked != labels[e.lid][2]:
                del m[key]
                dropped += 1
        return dropped

    # --- counting ---

    def observe(self, data: bytes, reply: bytes, client: object, tcp: bool, t0: float, miss: bool) -> None:
        """After a slow-path or miss reply: labelled count, duration, query log line."""
        seconds = time.perf_counter() - t0
        blocked, self._blocked_now = self._blocked_now, False
        rcode = reply[3] & wire.RCODE_MASK if len(reply) > 3 else 0
        qend = -1
        qtype = 0
        if len(reply) >= 12 and reply[4:6] == b"\x00\x01":
            try:
                qend = wire.question_end(reply)
                qtype = (reply[qend - 4] << 8) | reply[qend - 3]
            except (wire.WireError, IndexError):
                qend = -1
        proto = "tcp" if tcp else "udp"
        self.slow[(proto, qtype, rcode)] += 1
        m = self.mstats
        # Answered at once: a cache hit (only NOERROR/NXDOMAIN are cached), a block or an error.
        cached = not miss and not blocked and rcode in (wire.NOERROR, wire.NXDOMAIN)
        i = bisect_left(QUERY_BUCKETS, seconds)
        if not miss:
            m.hit_counts[i] += 1
            m.hit_sum += seconds
        else:
            m.miss_counts[i] += 1
            m.miss_sum += seconds
        if self.qlog is not None:
            ip = client[0] if isinstance(client, tuple) else str(client)
            name = reply[12:qend - 4] if qend > 0 else b""
            self.qlog.log(ip, name, qtype, rcode, seconds, cached=cached, blocked=blocked, protocol=proto)

    def upstream_observe(self, up, result: str, seconds: float) -> None:
        self.mstats.record_upstream(str(up.addr), result, seconds)

    def refresh(self, m: metrics.Stats) -> None:
        """Copy the server's plain-int counters into the metrics Stats (about once a second)."""
        srv = self.server
        st = srv.stats
        queries: defaultdict[tuple[str, int, int], int] = defaultdict(int, self.slow)
        blocked_fast = 0
        for lid, n in enumerate(st.hit_labels):
            if n:
                qtype, rcode, blocked = LABEL_KEYS[lid]
                queries[("udp", qtype, rcode)] += n
                if blocked:
                    blocked_fast += n
        m.queries = queries
        m.blocked = self.blocked_slow + blocked_fast
        m.cache_hits = st.cache_hits - blocked_fast
        m.cache_misses = st.misses
        m.cache_evictions = srv.cache.evictions
        m.cache_entries = len(srv.cache)
        m.rate_limited = st.rate_limited
        m.blocklist_entries = self.lists.entries
        for up in srv.pool.servers:
            m.upstream_healthy[str(up.addr)] = up.fails == 0
        m.counters["blocklist_reloads"] = self.reloads
        if self.limiter is not None:
            m.counters["rate_limit_buckets_evicted"] = self.limiter.evicted
        if self.qlog is not None:
            m.counters["query_log_dropped"] = self.qlog.dropped
        if srv.shared is not None:
            r = srv.shared.stats()
            for name in ("hits", "misses", "errors", "garbage"):
                m.counters[f"redis_{name}"] = r[name]
            m.redis_hist = metrics.Hist(tuple(r["latency_bounds"]), list(r["latency_counts"]), r["latency_sum"])
            m.redis_state = r["state"]

    def live_snapshot(self) -> metrics.Snapshot:
        self.refresh(self.mstats)
        return self.mstats.snapshot()

    def health(self) -> Health:
        ups = self.server.pool.servers
        shared = self.server.shared
        return Health(not self.server._stopping, sum(1 for u in ups if u.fails == 0), len(ups),
                      shared.state if shared is not None else "disabled")
