"""One worker: its sockets, its pipeline and listeners, from start to a graceful stop.

A query's way through the worker is heimdall/pipeline.py's (its docstring has
the stages in order); this module binds the sockets, builds the pipeline with
the stages every worker has, starts the UDP and TCP listeners (and the
encrypted ones, DoT, DoH and DoQ, when configured: heimdall/tls.py), runs the
reload and stop hooks, and runs a worker's loop until SIGTERM. The optional
stages and observers are installed by `setup` (heimdall/assembly.py) before
the listeners start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Callable

from heimdall.cache import Cache
from heimdall.config import Config, HostPort
from heimdall.counters import Counters
from heimdall.forwardzones import Forwarding, under
from heimdall.pipeline import Pipeline
from heimdall.sdnotify import Notifier
from heimdall.sharedtier import open_shared_tier
from heimdall.tcp import TcpListener
from heimdall.tls import TlsListeners, TlsSockets
from heimdall.udp import UdpListener
from heimdall.upstream import UpstreamPool
from heimdall.workershare import WorkerShare

log = logging.getLogger("heimdall.server")

UDP_RCVBUF = 4 << 20


def bind_sockets(addr: HostPort, reuseport: bool) -> tuple[socket.socket, socket.socket]:
    """A non-blocking UDP and a listening TCP socket on addr (SO_REUSEPORT for workers)."""
    udp = bind_datagram(addr, reuseport)
    try:
        tcp = bind_stream(addr, reuseport)
    except BaseException:
        udp.close()
        raise
    return udp, tcp


def bind_datagram(addr: HostPort, reuseport: bool) -> socket.socket:
    """A non-blocking UDP socket on addr with a deep receive queue (SO_REUSEPORT for workers)."""
    udp = socket.socket(addr.family, socket.SOCK_DGRAM)
    try:
        udp.setblocking(False)
        if reuseport:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                udp.setsockopt(socket.SOL_SOCKET, opt, UDP_RCVBUF)
                break
            except OSError:
                continue
        udp.bind((addr.host, addr.port))
    except BaseException:
        udp.close()
        raise
    return udp


def bind_stream(addr: HostPort, reuseport: bool) -> socket.socket:
    """A non-blocking listening TCP socket on addr (SO_REUSEPORT for workers)."""
    tcp = socket.socket(addr.family, socket.SOCK_STREAM)
    try:
        tcp.setblocking(False)
        if reuseport:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((addr.host, addr.port))
        tcp.listen(1024)
    except BaseException:
        tcp.close()
        raise
    return tcp


class BindError(Exception):
    """A listener's address cannot be bound; str() is the one-line reason."""


def bind_tls(config: Config, reuseport: bool) -> TlsSockets:
    """The DoT, DoH and DoQ sockets that are configured (BindError naming the address that failed)."""
    sockets = TlsSockets()
    try:
        for name, label, addr in (("dot", "DoT", config.tls_bind_addr), ("doh", "DoH", config.https_bind_addr),
                                  ("doq", "DoQ", config.quic_bind_addr)):
            if addr is not None:
                bind = bind_datagram if name == "doq" else bind_stream
                try:
                    setattr(sockets, name, bind(addr, reuseport))
                except OSError as exc:
                    raise BindError(bind_error_message(addr, exc, label)) from None
    except BaseException:
        sockets.close()
        raise
    return sockets


class DnsServer:
    """UDP + TCP (+ DoT, DoH, DoQ) service for one worker process."""

    def __init__(self, config: Config, udp: socket.socket, tcp: socket.socket,
                 share: tuple[WorkerShare, int] | None = None, tls: TlsSockets | None = None):
        self.config = config
        self.udp = udp
        self.tcp = tcp
        self.cache = Cache(config.cache_capacity, config.serve_stale)
        self.stats = Counters()
        self.shared = open_shared_tier(config)
        self.forwarding = Forwarding.build(config)  # forward zones: each its own pool, health and failover
        self.pipeline = Pipeline(config, self.cache, self.stats, self.forwarding.stage, self.shared)
        self.share = share  # with N workers: what they count together, and this worker's slot in it
        if share is not None:
            self.pipeline.share_inflight(*share)
        self.udp_listener = UdpListener(udp, self.pipeline, config)
        self.tcp_listener = TcpListener(self.pipeline, config)
        self.tls = TlsListeners(config, self.pipeline, tls or TlsSockets())
        self.reload_hooks: list[Callable[[], object]] = [self.tls.reload_certificate]  # run on SIGHUP
        self.stop_hooks: list[Callable[[], object]] = []  # run at the end of stop()
        self.stopping = False
        self._tcp_server: asyncio.AbstractServer | None = None

    @property
    def pools(self) -> list[UpstreamPool]:
        """Every upstream pool: the default one, then each forward zone's."""
        return self.forwarding.pools

    def set_forwarding(self, config: Config) -> set[str]:
        """SIGHUP: forward by `config`'s upstreams and zones from the next miss on; the zones that changed.

        Pools whose upstreams stayed keep their sockets and health; the others are retired
        (their sockets close once no query in them can still be waiting: UpstreamPool.retire).
        Cached answers under a changed zone are dropped: they came from upstreams that no
        longer answer for it."""
        old, new = self.forwarding, Forwarding.build(config, self.forwarding)
        self.forwarding = new
        self.pipeline.upstream = new.stage
        for pool in old.pools:
            if all(pool is not p for p in new.pools):
                pool.retire()
        changed = new.changed_zones(old)
        if changed:
            self.cache.drop_where(under(changed))
        return changed

    def rearm_udp(self) -> None:
        """Serve UDP with a reader built from the pipeline's stages as they are now (stage 1 changed)."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.udp.fileno())
        loop.add_reader(self.udp.fileno(), self.udp_listener.reader())

    def reload(self) -> None:
        """SIGHUP: run the reload hooks; a failing hook is logged, never fatal."""
        for hook in self.reload_hooks:
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)
            except Exception as exc:  # noqa: BLE001
                log.error(f"reload hook failed: {exc!r}")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.udp.fileno(), self.udp_listener.reader())
        self._tcp_server = await loop.create_server(self.tcp_listener.protocol, sock=self.tcp)
        await self.tls.start()

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight queries finish for up to `grace` seconds."""
        if self.stopping:
            return
        self.stopping = True
        asyncio.get_running_loop().remove_reader(self.udp.fileno())
        if self._tcp_server is not None:
            self._tcp_server.close()
        self.tls.stop_accepting()
        deadline = time.monotonic() + grace
        while (self.pipeline.pending or self.tcp_listener.busy() or self.tls.busy()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.tcp_listener.close_all()
        self.tls.close_all()
        self.udp.close()
        if self.shared is not None:
            await self.shared.close()
        st = self.stats
        log.info(f"stopped: {st.queries} queries ({st.cache_hits} cache hits, {st.misses} misses, "
            f"{st.servfail} SERVFAIL), {st.udp_datagrams} datagrams in {st.udp_wakeups} wakeups, "
            f"{len(self.cache)} cached")
        for hook in self.stop_hooks:
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:  # noqa: BLE001
                log.error(f"stop hook failed: {exc!r}")


Setup = Callable[["DnsServer"], object]  # may return a coroutine (awaited before serving)


async def serve_forever(config: Config, udp: socket.socket, tcp: socket.socket,
                        on_ready: Callable[[DnsServer], None] | None = None,
                        setup: Setup | None = None, notifier: Notifier | None = None,
                        share: tuple[WorkerShare, int] | None = None, tls: TlsSockets | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the exit status.

    `setup(server)` runs in the worker before it serves: the place to install
    the optional stages and observers, reload and stop hooks (heimdall/assembly.py).
    `notifier` is the service manager's, when this process serves alone.
    """
    import signal

    server = DnsServer(config, udp, tcp, share, tls)
    if setup is not None:
        pending = setup(server)
        if asyncio.iscoroutine(pending):  # async setup: e.g. bind the HTTP API before "ready"
            await pending
    saver = None
    if config.cache_file:  # restore before serving, snapshot on a timer and at shutdown
        from heimdall.snapshot import Snapshotter

        saver = Snapshotter(server.cache, config.cache_file, config.cache_snapshot_interval)
        saver.restore(server.pipeline.decided_locally)  # names a policy answers now are not restored
    await server.start()
    if saver is not None:
        saver.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    notifier = notifier or Notifier(None)

    def reload() -> None:
        notifier.reloading()
        server.reload()
        notifier.ready("reloading blocklists and logs in the background")

    loop.add_signal_handler(signal.SIGHUP, reload)
    if on_ready is not None:
        on_ready(server)
    notifier.ready(f"serving DNS on {config.bind_addr}")
    await stop.wait()
    notifier.stopping()
    await server.stop(config.shutdown_grace)
    if saver is not None:
        saver.stop_and_save()
    return 0


def run_worker(config: Config, udp: socket.socket, tcp: socket.socket,
               on_ready: Callable[[DnsServer], None] | None = None, setup: Setup | None = None,
               notifier: Notifier | None = None, share: tuple[WorkerShare, int] | None = None,
               tls: TlsSockets | None = None) -> int:
    """Run a worker on a fresh uvloop."""
    import uvloop

    return uvloop.run(serve_forever(config, udp, tcp, on_ready, setup, notifier, share, tls))


def bind_error_message(addr: HostPort, exc: OSError, listener: str = "") -> str:
    """One line naming the address (and the listener, e.g. DoT, when it is not the UDP/TCP one)."""
    where = f"{listener} {addr}" if listener else str(addr)
    if exc.errno == errno.EADDRINUSE:
        return f"cannot bind {where}: address already in use"
    if exc.errno == errno.EACCES:
        return f"cannot bind {where}: permission denied"
    return f"cannot bind {where}: {exc.strerror or exc}"
