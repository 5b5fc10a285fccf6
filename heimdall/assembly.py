"""Which optional stages and observers a worker runs, built from the configuration.

`prepare(config)` runs once before fork: it downloads the list URLs (once,
for every worker; a URL that fails falls back on its saved copy), loads the
blocklists (so their frozensets' pages are shared copy-on-write; `gc.freeze()`
keeps the collector from touching them) and checks the blocking settings. The `Setup` it returns
runs in every worker and installs into that worker's pipeline:

* stage 1, rate limit: RateLimiter.allow on the packed client address;
  a limited query is answered REFUSED or dropped;
* stage 3, local records (heimdall/localrecords.py), then blocking
  (heimdall/blocking.py), each with its reload on SIGHUP; blocking also with
  its mtime poll and the list URLs' refresh (worker 0 downloads, the others
  follow the saved copies), and per client group (heimdall/clientgroups.py);
* observers: the query log (while it is on, the hot path answers nothing
  itself, so that every query is logged) and metrics (heimdall/counting.py);
* the HTTP API: with one worker it runs on the worker's loop and reads live
  figures; with N workers every worker publishes a snapshot file each second
  and worker 0 serves the API from the sum of the files.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from heimdall import __version__, metrics, reconfigure
from heimdall.blocking import Blocking
from heimdall.blocklist import BlocklistError, BlocklistManager
from heimdall.blockresponse import BlockResponder, BlockResponseError
from heimdall.clientgroups import DEFAULT_GROUP, ClientGroup, GroupedBlocking, GroupTable, drop_group_entries
from heimdall.config import Config, ConfigError, reload_config
from heimdall.control import Controller, WorkerControl
from heimdall.counting import Counting
from heimdall.httpapi import HttpApi, health_from_snapshot
from heimdall.liststore import ListStore, check_writable, default_state_dir
from heimdall.logs import setup_logging
from heimdall.metrics import SnapshotStore
from heimdall.processmetrics import BuildInfoCollector, ProcessTreeCollector
from heimdall.querylog import QueryLog
from heimdall.ratelimit import RateLimitConfig, RateLimiter
from heimdall.steering import spread, steer
from heimdall.subscriptions import Subscriptions
from heimdall.udp import hot_path_in_use
from heimdall.workershare import WorkerShare

if TYPE_CHECKING:
    from heimdall.fleet import Fleet
    from heimdall.localdata import LocalData
    from heimdall.localrecords import Built, LocalRecords
    from heimdall.server import DnsServer

log = logging.getLogger("heimdall.assembly")

WORKER_INDEX_ENV = "HEIMDALL_WORKER_INDEX"  # set by the supervisor in each forked worker
PUBLISH_INTERVAL = 1.0


class FeatureError(Exception):
    """An optional stage could not start (unreadable list, HTTP address taken); str() is one line."""


def wanted(config: Config) -> bool:
    return bool(config.blocklists or config.allowlist or config.client_groups or config.enable_rate_limiting
                or config.http_bind_addr is not None or config.query_log or config.config_file
                or local_wanted(config))


def local_wanted(config: Config) -> bool:
    return bool(config.local_records or config.local_entries or config.local_zones)


def prepare(config: Config) -> Callable[["DnsServer"], object] | None:
    """Before fork: load lists, check settings; returns the per-worker setup (or None)."""
    if not wanted(config):
        return None
    try:
        BlockResponder(config.blocking_mode, config.blocking_ttl, config.blocking_custom_ip)
    except BlockResponseError as exc:
        raise FeatureError(str(exc)) from None
    manager = None
    if config.blocklists or config.allowlist:
        manager = BlocklistManager(config.blocklists, config.allowlist, subscriptions(config))
        started = time.monotonic()
        if manager.urls:
            fetch_at_start(config, manager)
        try:
            manager.load()
        except BlocklistError as exc:
            raise FeatureError(str(exc)) from None
        log.info("blocklists ready in %.1fs", time.monotonic() - started)
    group_managers = [load_group_lists(config, group) for group in config.client_groups]
    local = None
    if local_wanted(config):  # imported only when used: dnspython stays out of a server without them
        from heimdall.localdata import LocalDataError
        from heimdall.localrecords import load_built

        try:
            local = load_built(config)
        except LocalDataError as exc:
            raise FeatureError(f"local records: {exc}") from None
    store_dir = None
    if config.worker_threads > 1 and config.http_bind_addr is not None:
        store_dir = tempfile.mkdtemp(prefix="heimdall-stats-")
        owner = os.getpid()
        atexit.register(remove_if_owner, store_dir, owner)
    gc.collect()
    gc.freeze()  # the lists (and everything loaded so far) stay shared after fork

    def setup(server: "DnsServer"):
        return Assembly(config, server, manager, store_dir, group_managers, local).install()

    return setup


def load_group_lists(config: Config, group: ClientGroup) -> BlocklistManager:
    """A client group's lists, loaded before fork like the default ones; its block answer checked."""
    try:
        BlockResponder(group.blocking_mode or config.blocking_mode, config.blocking_ttl, config.blocking_custom_ip)
        manager = BlocklistManager(group.blocklists, group.allowlist)
        manager.load()
    except (BlockResponseError, BlocklistError) as exc:
        raise FeatureError(f"client group {group.name!r}: {exc}") from None
    log.info("client group %s: %d clients' networks, %d names blocked", group.name, len(group.clients),
             manager.current.entries)
    return manager


def subscriptions(config: Config) -> Subscriptions:
    """Downloads of list URLs into the state directory (made when the first one is saved)."""
    store = ListStore(config.state_dir or default_state_dir())
    return Subscriptions(store, config.blocklist_refresh, config.blocklist_max_bytes, config.blocklist_fetch_timeout)


def fetch_at_start(config: Config, manager: BlocklistManager) -> None:
    """Every list URL once, before fork; a failure leaves the saved copy, which manager.load() then reads."""
    assert manager.subscriptions is not None
    directory = manager.subscriptions.store.directory
    try:
        check_writable(directory)
    except OSError as exc:
        raise FeatureError(f"cannot keep list downloads in {directory} (HEIMDALL_STATE_DIR="
                           f"{manager.subscriptions.store.state_dir}): {exc.strerror or exc}") from None
    log.info(f"downloading {len(manager.urls)} list URLs into {directory}; "
             f"then every {config.blocklist_refresh:g}s (HEIMDALL_BLOCKLIST_REFRESH)")
    manager.fetch(force=True)


def remove_if_owner(directory: str, owner: int) -> None:
    """At exit of the process that made it (not of a forked worker): remove the stats directory."""
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)


def rate_limiter(config: Config, share: WorkerShare | None) -> RateLimiter:
    """Per-IP buckets as configured; the global bucket is the workers' shared one when there are several."""
    return RateLimiter(RateLimitConfig(
        per_ip_qps=config.queries_per_second_per_ip, per_ip_burst=config.burst_size_per_ip,
        global_qps=config.global_queries_per_second, aggregate=config.rate_limit_aggregate),
        now=time.monotonic(), share=share)


class Assembly:
    """One worker's optional stages and observers, and the tasks and API that go with them."""

    def __init__(self, config: Config, server: "DnsServer", manager: BlocklistManager | None,
                 store_dir: str | None, group_managers: list[BlocklistManager] | None = None,
                 local: "tuple[LocalData, Built] | None" = None) -> None:
        self.config = config
        self.local: "LocalRecords | None" = None
        if local is not None:
            from heimdall.localrecords import LocalRecords

            self.local = LocalRecords(local[0], server.cache, local[1])
        self.server = server
        self.manager = manager
        self.group_managers = group_managers or []
        self.grouped: GroupedBlocking | None = None
        self.index = int(os.environ.get(WORKER_INDEX_ENV, "0") or 0)
        self.store = SnapshotStore(store_dir) if store_dir else None
        self.blocking: Blocking | None = None
        self.qlog: QueryLog | None = None
        self.counting: Counting | None = None
        self.api: HttpApi | None = None
        self.control = WorkerControl(None, server.cache)  # the control API's actions, in this worker
        self.limiter: RateLimiter | None = None
        self.steered = False  # the reuseport group picks a worker by client address (steering.py)
        self.fleet: "Fleet | None" = None
        self._tasks: list[asyncio.Task] = []

    async def install(self) -> None:
        cfg, srv, pipeline = self.config, self.server, self.server.pipeline
        self.set_rate_limit()
        if self.local is not None:
            pipeline.local_records = self.local
        if self.manager is not None:
            self.blocking = pipeline.blocking = Blocking(cfg, self.manager, srv.cache, leader=self.index == 0)
            if cfg.cname_cloaking:
                pipeline.check_chain = self.blocking.check_chain
            await self.blocking.start()
        if cfg.client_groups:
            await self.set_groups(cfg.client_groups, self.group_managers)
        if cfg.query_log:
            self.qlog = QueryLog(cfg.query_log).start()
            pipeline.observers.append(self.qlog)
            pipeline.fast_path = False  # every query must reach the query log
        if cfg.http_bind_addr is not None:
            self.counting = Counting(srv, self.blocking, self.limiter, self.qlog,
                                     self.grouped.stages[1:] if self.grouped else [])
            pipeline.observers.append(self.counting)
            pipeline.time_hits = self.counting.mstats.observe_hits
            for pool in srv.pools:
                pool.observe = self.counting.upstream_observe
        self.control.blocking = self.grouped or self.blocking
        if srv.shared is not None:  # a fleet sharing Redis: flushes and list reloads reach every instance
            from heimdall.fleet import Fleet

            self.fleet = Fleet(srv.shared.redis, srv.cache, self.reload_lists)
            self.fleet.start()
        srv.reload_hooks.append(self.on_sighup)
        srv.stop_hooks.append(self.stop)
        self._start_tasks()
        if self.counting is not None and self.index == 0:
            await self._start_http()

    def set_rate_limit(self) -> None:
        """Stage 1 as configured: a limiter with fresh buckets, or none."""
        cfg, pipeline = self.config, self.server.pipeline
        share = self.server.share[0] if self.server.share is not None else None
        old, self.limiter = self.limiter, rate_limiter(cfg, share) if cfg.enable_rate_limiting else None
        pipeline.admit = None
        if self.limiter is not None:
            allow, clock = self.limiter.allow, time.monotonic
            pipeline.admit = lambda ip: allow(ip, clock())
            self.limiter.evicted = old.evicted if old is not None else 0  # a counter never goes back
        pipeline.refuse_limited = cfg.rate_limit_action == "refused"
        if self.counting is not None:
            self.counting.limiter = self.limiter
        if cfg.worker_threads > 1 and (self.limiter is not None or self.steered):
            self.steer_clients(self.limiter is not None)

    def steer_clients(self, on: bool) -> None:
        """With N workers and a limiter: each client to one worker, so its buckets are in one place."""
        cfg, srv = self.config, self.server
        try:
            for sock in (srv.udp, srv.tcp, *(sock for _, sock in srv.tls.sockets.items())):
                if on:
                    steer(sock, cfg.worker_threads, cfg.rate_limit_aggregate)
                else:
                    spread(sock)
            self.steered = on
        except OSError as exc:
            log.warning(f"cannot steer clients to workers by address ({exc.strerror or exc}): "
                        "the per-client rate limit applies per worker")

    async def set_groups(self, groups: tuple[ClientGroup, ...], managers: list[BlocklistManager]) -> None:
        """Client groups from now on, one blocking stage per group over `managers` (its lists)."""
        cfg, srv = self.config, self.server
        stages = []
        for group, manager in zip(groups, managers):
            stage = Blocking(replace(cfg, blocking_mode=group.blocking_mode or cfg.blocking_mode), manager, srv.cache)
            await stage.start()
            stages.append(stage)
        if self.blocking is not None:
            self.blocking.purger = None  # the groups' purge, when there are groups, takes over below
        self.grouped = GroupedBlocking(self.blocking, stages, GroupTable(groups), srv.cache) if stages else None
        srv.pipeline.groups = self.grouped
        self.control.blocking = self.grouped or self.blocking
        self.control.tick(time.time())  # a pause in force covers the new stages too
        if self.counting is not None:
            self.counting.set_group_stages(stages)
        if self.grouped is not None:
            self.grouped.purge()  # entries cached before these groups were known
        else:
            drop_group_entries(srv.cache)

    def _start_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        if self.blocking is not None and self.config.blocklist_reload_interval > 0:
            self._tasks.append(loop.create_task(self.blocking.poll(self.config.blocklist_reload_interval)))
        if self.blocking is not None and self.manager is not None and self.manager.subscriptions is not None:
            # list URLs (also ones a re-read config file adds): worker 0 downloads, the others follow
            lists = self.blocking.refresh_forever() if self.index == 0 else self.blocking.follow_copies()
            self._tasks.append(loop.create_task(lists))
        if self.counting is not None:  # the control API is part of the HTTP endpoint
            self._tasks.append(loop.create_task(self.control.follow(self.store.directory if self.store else None)))
        if self.store is not None and self.counting is not None:
            self._tasks.append(loop.create_task(
                metrics.publish_forever(self.counting.mstats, self.store, PUBLISH_INTERVAL, self.counting.refresh)))

    async def _start_http(self) -> None:
        addr = self.config.http_bind_addr
        assert addr is not None and self.counting is not None
        if self.store is not None:
            store = self.store
            figures, health = store.merged, lambda: health_from_snapshot(store.merged())
        else:
            figures, health = self.counting.live_snapshot, self.counting.health
        collectors = (ProcessTreeCollector(self.process_tree), BuildInfoCollector(__version__, hot_path_in_use(self.config)))
        fetch_lists = self.blocking.fetch_lists if self.blocking is not None else None
        self.api = HttpApi(figures, health, addr.host, addr.port, collectors,
                           control=Controller(self.control, self.store, fetch_lists, self.group_names, self.fleet),
                           token=self.config.api_token)
        try:
            await self.api.start()
        except OSError as exc:
            self.api = None
            reason = "address already in use" if exc.errno == 98 else (exc.strerror or str(exc))
            raise FeatureError(f"cannot bind HTTP API {addr} (HEIMDALL_HTTP_BIND_ADDR): {reason}") from None

    def group_names(self) -> tuple[str, ...]:
        return (DEFAULT_GROUP, *(g.name for g in self.config.client_groups))

    def process_tree(self) -> list[tuple[int, str]]:
        """The server's processes: this one alone, or the supervisor and every live worker."""
        if self.store is None:
            return [(os.getpid(), "server")]
        return [(os.getppid(), "supervisor"), *((s.pid, "worker") for s in self.store.read())]

    def on_sighup(self) -> None:
        if self.config.config_file:
            self.reread_config_file()
        if self.qlog is not None:
            self.qlog.reopen()
        self.reload_lists()
        if self.fleet is not None and self.index == 0 and (self.blocking or self.grouped):
            self._tasks.append(asyncio.get_running_loop().create_task(self.fleet.lists_reloaded()))

    def reload_lists(self) -> None:
        """Blocklists, group lists and local records from their files (SIGHUP, or the fleet's word)."""
        if self.blocking is not None:
            self.blocking.on_sighup()
        for stage in self.grouped.stages[1:] if self.grouped else ():
            if stage is not None:
                stage.request_reload()
        if self.local is not None:
            self.local.request_reload(self.config)

    def reread_config_file(self) -> None:
        """SIGHUP with a config file: apply what can change live, name in one line what needs a restart."""
        path = self.config.config_file
        try:
            new = reconfigure.as_running(self.config, reload_config())
        except ConfigError as exc:
            log.error(f"{path} not applied, the running configuration stays: {exc}")
            return
        live, restart = reconfigure.split(reconfigure.changed(self.config, new), self.manager is not None,
                                          self.local is not None)
        if self.index == 0:  # before the new level applies: this line belongs to the old one
            log.info(f"{path} re-read: {', '.join(live) or 'nothing'} changed live"
                     + (f"; needs a restart: {', '.join(restart)}" if restart else ""))
        old, self.config = self.config, replace(self.config, **{n: getattr(new, n) for n in live})
        setup_logging(self.config.log_level, self.config.log_format)
        if self.manager is not None:
            self.manager.block_files, self.manager.allow_files = list(self.config.blocklists), list(self.config.allowlist)
        if any(n in reconfigure.FORWARDING for n in live):
            zones = self.server.set_forwarding(self.config)
            if zones and self.index == 0:
                log.info(f"forward zones changed: {', '.join(sorted(zones))} (their cached answers dropped)")
        if any(n in reconfigure.RATE_LIMIT for n in live):
            self.set_rate_limit()
            self.server.rearm_udp()
        if "client_groups" in live:
            self._tasks.append(asyncio.get_running_loop().create_task(self.regroup(old.client_groups)))

    async def regroup(self, previous: tuple[ClientGroup, ...]) -> None:
        """The re-read file's client groups, their lists loaded in a thread; lists that do not load
        leave the groups in force as they were."""
        cfg, groups = self.config, self.config.client_groups
        try:
            managers = await asyncio.get_running_loop().run_in_executor(
                None, lambda: [load_group_lists(cfg, g) for g in groups])
        except FeatureError as exc:
            log.error(f"client groups not changed: {exc}")
            self.config = replace(self.config, client_groups=previous)
            return
        await self.set_groups(groups, managers)
        if self.index == 0:
            log.info(f"client groups now: {', '.join(g.name for g in groups) or 'none'}")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.api is not None:
            await self.api.stop()
        if self.store is not None:
            self.store.remove(os.getpid())
        if self.qlog is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.qlog.close, 5.0)
