"""HTTP endpoints /metrics, /health, /stats and the control API (/api) on aiohttp.

Runs on any asyncio (or uvloop) loop: ``await HttpApi(...).start()`` in the
process that serves (N=1) or in the supervisor (N>1), or
``BackgroundHttpApi`` when that process has no event loop of its own (it runs
one in a daemon thread). It only needs ``snapshot_fn() -> Snapshot`` (the
figures summed across workers, e.g. ``SnapshotStore.merged`` or
``Stats.snapshot``) and optionally ``health_fn() -> Health``; by default a
server is healthy while at least one upstream is.

HEIMDALL_HTTP_BIND_ADDR: ``host:port``, ``[v6]:port`` or ``disabled``
(see ``parse_bind_addr``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from heimdall.config import parse_duration
from heimdall.control import Controller
from heimdall.metrics import Snapshot
from heimdall.prometheus import HeimdallCollector

log = logging.getLogger(__name__)

# 8053: "DNS" in the 80xx block, the default of no DNS or monitoring tool we run beside (8080 is the
# port most often taken; 8953 is Unbound's control, 8081-8083 PowerDNS and dnsdist, 9153 CoreDNS,
# 4000 Blocky, 3000 AdGuard Home and Grafana, 9090-9100 Prometheus and node_exporter).
DEFAULT_BIND = "127.0.0.1:8053"


@dataclass(frozen=True)
class Health:
    serving: bool
    upstreams_healthy: int
    upstreams_total: int
    redis: str = "disabled"  # reported, never a reason for 503: the shared tier is optional

    @property
    def ok(self) -> bool:
        return self.serving and self.upstreams_healthy > 0


def parse_bind_addr(value: str | None) -> tuple[str, int] | None:
    """"127.0.0.1:8053", "[::1]:8053", ":8053" (all v4) or "disabled" -> (host, port) or None."""
    value = (value or DEFAULT_BIND).strip()
    if value.lower() in ("disabled", "off", "none", "false", "0"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"HEIMDALL_HTTP_BIND_ADDR must be host:port or 'disabled', not {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host or "0.0.0.0", int(port))


def health_from_snapshot(s: Snapshot, serving: bool = True) -> Health:
    return Health(serving, sum(1 for ok in s.upstream_healthy.values() if ok), len(s.upstream_healthy),
                  s.redis_state)


def stats_document(s: Snapshot) -> dict:
    """The /stats JSON: cache, upstream, blocking and rate-limit figures."""
    by_proto: dict[str, int] = {}
    for (proto, _, _), n in s.queries.items():
        by_proto[proto] = by_proto.get(proto, 0) + n
    lookups = s.cache_hits + s.cache_misses
    upstreams: dict[str, dict] = {u: {"healthy": ok, "requests": {}} for u, ok in s.upstream_healthy.items()}
    for (u, result), n in s.upstream_requests.items():
        upstreams.setdefault(u, {"healthy": False, "requests": {}})["requests"][result] = n
    for u, h in s.upstream_duration.items():
        if h.count:
            upstreams.setdefault(u, {"healthy": False, "requests": {}})["avg_ms"] = round(h.total / h.count * 1000, 3)
    return {
        "workers": s.workers,
        "queries": {"total": sum(s.queries.values()), "by_protocol": by_proto},
        "cache": {"hits": s.cache_hits, "misses": s.cache_misses,
                  "hit_ratio": round(s.cache_hits / lookups, 4) if lookups else None,
                  "evictions": s.cache_evictions, "entries": s.cache_entries},
        "upstreams": upstreams,
        "blocking": {"blocked": s.blocked, "blocklist_entries": s.blocklist_entries,
                     **({"urls": s.lists} if s.lists else {})},
        "rate_limit": {"rate_limited": s.rate_limited},
        "counters": s.counters,
    }


class HttpApi:
    """The aiohttp application and its site; start() and stop() on the caller's loop."""

    def __init__(self, snapshot_fn: Callable[[], Snapshot], health_fn: Callable[[], Health] | None = None,
                 host: str = "127.0.0.1", port: int = 8053, collectors: Sequence[Collector] = (),
                 control: Controller | None = None, token: str = "") -> None:
        self.snapshot_fn = snapshot_fn
        self.health_fn = health_fn or (lambda: health_from_snapshot(self.snapshot_fn()))
        self.host, self.port = host, port
        self.registry = CollectorRegistry()
        for collector in (HeimdallCollector(snapshot_fn), *collectors):
            self.registry.register(collector)
        self.control, self.token = control, token
        self.app = web.Application(middlewares=[self._authorize])
        self.app.add_routes([web.get("/metrics", self._metrics), web.get("/health", self._health),
                             web.get("/stats", self._stats)])
        if control is not None:
            self.app.add_routes([web.post("/api/blocking/disable", self._disable),
                                 web.post("/api/blocking/enable", self._enable),
                                 web.get("/api/blocking/status", self._status),
                                 web.post("/api/cache/flush", self._flush),
                                 web.post("/api/lists/refresh", self._refresh)])
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        try:
            h = self.health_fn()
        except Exception as e:  # noqa: BLE001 - a broken figure source means "not healthy"
            log.warning("health check failed: %s", e)
            return web.json_response({"status": "unhealthy", "error": str(e)}, status=503)
        body = {"status": "ok" if h.ok else "unhealthy", **asdict(h)}
        return web.json_response(body, status=200 if h.ok else 503)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(stats_document(self.snapshot_fn()), dumps=lambda o: json.dumps(o, indent=1))

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """With HEIMDALL_API_TOKEN set, every /api call carries `Authorization: Bearer <token>`."""
        if self.token and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="heimdall"'})
        return await handler(request)

    async def _act(self, extra: dict | None = None, **changes: Any) -> web.Response:
        assert self.control is not None
        state, acked, live = await self.control.change(**changes)
        body = {"generation": state.generation, "workers": live, "acknowledged": acked,
                "blocking": self.control.status(), **(extra or {})}
        return web.json_response(body, status=200 if acked >= live else 504)

    async def _disable(self, request: web.Request) -> web.Response:
        """Every client group's blocking, or `?group=NAME`'s, off for `?duration=` (else until enabled)."""
        assert self.control is not None
        text = request.query.get("duration", "")
        try:
            seconds = parse_duration(text) if text else math.inf
        except ValueError as exc:
            return web.json_response({"error": f"duration: {exc}"}, status=400)
        return await self._pause(request, time.time() + seconds)

    async def _enable(self, request: web.Request) -> web.Response:
        """Blocking back on for every group (every pause ends), or for `?group=NAME` (its own pause ends)."""
        return await self._pause(request, 0.0)

    async def _pause(self, request: web.Request, until: float) -> web.Response:
        assert self.control is not None
        try:
            changes = self.control.pause_changes(request.query.get("group"), until)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return await self._act(**changes)

    async def _status(self, request: web.Request) -> web.Response:
        assert self.control is not None
        return web.json_response(self.control.status())

    async def _flush(self, request: web.Request) -> web.Response:
        """Every worker's cache, then (with Redis) the fleet's keys there and the other instances' caches."""
        assert self.control is not None
        response = await self._act(flush=self.control.state.generation + 1)
        if self.control.fleet is not None:
            await self.control.fleet.flushed()
        return response

    async def _refresh(self, request: web.Request) -> web.Response:
        """List URLs are downloaded first (here, in the worker that downloads), then every worker reloads."""
        assert self.control is not None
        fetched = await self.control.fetch_lists() if self.control.fetch_lists is not None else {}
        response = await self._act({"urls": fetched} if fetched else None, refresh=self.control.state.generation + 1)
        if self.control.fleet is not None:
            await self.control.fleet.lists_reloaded()
        return response

    async def start(self) -> None:
        """Bind and serve; raises OSError if the address is taken."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = self._runner.addresses
        if sockets:
            self.port = sockets[0][1]  # the real port when 0 was asked for
        log.info("HTTP API on %s:%d (/metrics /health /stats)", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class BackgroundHttpApi:
    """HttpApi on its own event loop in a daemon thread, for a process without a loop."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="heimdall-http", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.api.start(), self._loop).result(timeout)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.api.stop(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
