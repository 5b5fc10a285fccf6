"""Process model: serve in this process (1 worker) or supervise N forked workers.

Python threads share one GIL, so N workers are N processes, each with its own
uvloop and its own SO_REUSEPORT UDP and TCP sockets (the kernel spreads
clients over them). The supervisor binds nothing: it loads shared state,
forks, restarts a worker that dies (with backoff), forwards SIGHUP, and on
SIGTERM/SIGINT tells workers to stop, waits for them (bounded), exits 0.
"""

from __future__ import annotations

import logging
import os
import resource
import select
import signal
import time
import traceback
from dataclasses import dataclass, field, replace

from heimdall.config import Config, ConfigError, HostPort, reload_config
from heimdall.logs import setup_logging
from heimdall.sdnotify import Notifier
from heimdall.server import BindError, Setup, bind_error_message, bind_sockets, bind_tls, run_worker
from heimdall.tls import TlsError, TlsSockets, check_certificate
from heimdall.udp import hot_path_built
from heimdall.workershare import WorkerShare

log = logging.getLogger("heimdall.supervisor")

EXIT_BIND = 3
EXIT_STARTUP = 4  # a worker could not start a feature (e.g. the HTTP API); it printed why
READY_TIMEOUT = 15.0
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StartupError(Exception):
    """Could not start serving; str() is the one-line reason."""


def listening_line(config: Config, pid: int) -> str:
    n = config.worker_threads
    ups = ", ".join(map(str, config.upstream_servers))
    workers = f"{n} worker{'s' if n > 1 else ''}"
    encrypted = "".join(f", {name} {addr}" for name, addr in (("dot", config.tls_bind_addr),
                                                               ("doh", config.https_bind_addr),
                                                               ("doq", config.quic_bind_addr)) if addr is not None)
    return f"listening on udp+tcp {config.bind_addr}{encrypted} ({workers}, pid {pid}), upstreams {ups}"


def serve_single(config: Config, setup: Setup | None = None, notifier: Notifier | None = None) -> int:
    """One process serves; its pid is the one profilers attach to."""
    try:
        udp, tcp = bind_sockets(config.bind_addr, reuseport=False)
    except OSError as exc:
        raise StartupError(bind_error_message(config.bind_addr, exc)) from None
    try:
        tls = bind_tls(config, reuseport=False)
    except BindError as exc:
        udp.close()
        tcp.close()
        raise StartupError(str(exc)) from None
    from heimdall.assembly import FeatureError

    try:
        return run_worker(config, udp, tcp, setup=setup, notifier=notifier, tls=tls,
                          on_ready=lambda _s: log.info(listening_line(config, os.getpid())))
    except (FeatureError, TlsError) as exc:
        raise StartupError(str(exc)) from None


@dataclass
class Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


@dataclass
class Supervisor:
    config: Config
    setup: Setup | None = None
    slots: list[Slot] = field(default_factory=list)
    stopping: bool = False
    notifier: Notifier = field(default_factory=lambda: Notifier(None))

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self.ready_r, self.ready_w = os.pipe()
        self.slots = [Slot(i) for i in range(self.config.worker_threads)]
        self.share = WorkerShare(self.config.worker_threads)  # before fork: every worker maps it
        try:
            for slot in self.slots:
                self._spawn(slot)
            self._await_ready()
            line = listening_line(self.config, os.getpid())
            log.info(line)
            self.notifier.ready(line)
            return self._watch()
        finally:
            self._stop_all()

    def _spawn(self, slot: Slot) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self.ready_r)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before the worker's loop handles it
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                os.environ["HEIMDALL_WORKER_INDEX"] = str(slot.index)  # worker 0 serves the HTTP API
                config = self.config
                if config.cache_file:  # each worker snapshots its own cache (heimdall/snapshot.py)
                    config = replace(config, cache_file=f"{config.cache_file}.{slot.index}")
                code = worker_main(config, self.ready_w, self.setup, (self.share, slot.index))
            except BaseException:  # noqa: BLE001 - report and exit, never return into the supervisor
                traceback.print_exc()
            finally:
                os._exit(code)
        slot.pid, slot.started = pid, time.monotonic()

    def _await_ready(self) -> None:
        need = len(self.slots)
        deadline = time.monotonic() + READY_TIMEOUT
        while need > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupError(f"workers did not start within {READY_TIMEOUT:.0f}s")
            r, _, _ = select.select([self.ready_r], [], [], min(left, 0.1))
            if r:
                need -= len(os.read(self.ready_r, 64))
            for slot in self.slots:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
                if pid:
                    slot.pid = 0
                    code = os.waitstatus_to_exitcode(status)
                    if code == EXIT_BIND:
                        raise StartupError("a worker cannot bind its addresses (see its message above)")
                    if code == EXIT_STARTUP:
                        raise StartupError("a worker could not start (see its message above)")
                    raise StartupError(f"worker exited during startup with status {code}")

    def _watch(self) -> int:
        while True:
            info = signal.sigtimedwait(SIGNALS, 0.2)
            self._drain_ready()
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    log.info("stopping: telling workers to finish in-flight queries")
                    self.notifier.stopping()
                    return 0
                if info.si_signo == signal.SIGHUP:
                    self.notifier.reloading()
                    self._reread_log_settings()
                    for slot in self.slots:
                        if slot.pid:
                            os.kill(slot.pid, signal.SIGHUP)
                    self.notifier.ready("reload handed to every worker")
            self._reap_and_restart()

    def _reread_log_settings(self) -> None:
        """The supervisor logs too: it takes the file's log settings (the workers apply the rest and report)."""
        if self.config.config_file:
            try:
                new = reload_config()
            except ConfigError:
                return  # worker 0 logs why the file was not applied
            setup_logging(new.log_level, new.log_format)

    def _drain_ready(self) -> None:
        while select.select([self.ready_r], [], [], 0)[0]:
            if not os.read(self.ready_r, 64):
                break

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
                if pid:
                    code = os.waitstatus_to_exitcode(status)
                    lived = now - slot.started
                    slot.failures = slot.failures + 1 if lived < 10 else 1
                    delay = min(10.0, 0.1 * 2 ** (slot.failures - 1))
                    slot.pid, slot.restart_at = 0, now + delay
                    self.share.publish(slot.index, 0)  # its queries in flight died with it
                    log.warning(f"worker {pid} exited with status {code}; restarting in {delay:.1f}s")
            if not slot.pid and now >= slot.restart_at:
                self._spawn(slot)

    def _stop_all(self) -> None:
        live = [s for s in self.slots if s.pid]
        for slot in live:
            try:
                os.kill(slot.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.config.shutdown_grace + 3
        while live and time.monotonic() < deadline:
            for slot in list(live):
                if os.waitpid(slot.pid, os.WNOHANG)[0]:
                    live.remove(slot)
            time.sleep(0.02)
        for slot in live:
            log.warning(f"worker {slot.pid} did not stop in time; killing it")
            os.kill(slot.pid, signal.SIGKILL)
            os.waitpid(slot.pid, 0)


def worker_main(config: Config, ready_fd: int, setup: Setup | None = None,
                share: tuple[WorkerShare, int] | None = None) -> int:
    """A forked worker: bind with SO_REUSEPORT, signal readiness, serve."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        udp, tcp = bind_sockets(config.bind_addr, reuseport=True)
    except OSError as exc:
        log.error(bind_error_message(config.bind_addr, exc))
        return EXIT_BIND
    try:
        tls: TlsSockets = bind_tls(config, reuseport=True)
    except BindError as exc:
        log.error(str(exc))
        return EXIT_BIND

    def ready(_server: object) -> None:
        os.write(ready_fd, b"r")

    from heimdall.assembly import FeatureError

    try:
        return run_worker(config, udp, tcp, on_ready=ready, setup=setup, share=share, tls=tls)
    except (FeatureError, TlsError) as exc:
        log.error(str(exc))
        return EXIT_STARTUP


def start_demo_upstream(config: Config):
    """Start the lab's NSD with the test zones on a free loopback port (no internet here)."""
    from tools.nsd import LocalUpstream

    up = LocalUpstream().start()
    log.info(f"demo upstream: NSD on {up.addr} serving bench.test. and example.test. (pid {up.pid})")
    return up, replace(config, upstream_servers=(HostPort(up.address, up.port),))


def prepare_shared(config: Config) -> Setup | None:
    """Load state every worker shares, once, before fork (copy-on-write pages).

    Returns the per-worker setup that installs the optional stages and observers
    into each worker's pipeline (heimdall/assembly.py).
    """
    from heimdall.assembly import FeatureError, prepare

    try:
        return prepare(config)
    except FeatureError as exc:
        raise StartupError(str(exc)) from None


def raise_fd_limit(config: Config) -> None:
    """Every TCP connection is a descriptor: the soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError):
            pass
    if soft != resource.RLIM_INFINITY and soft < config.tcp_max_connections + 256:
        log.warning(f"open files limit {soft} is below HEIMDALL_TCP_MAX_CONNECTIONS ({config.tcp_max_connections}) "
                    "+ 256 per worker: raise it (LimitNOFILE= in the unit, ulimit -n)")


def serve(config: Config) -> int:
    """`heimdall serve`: demo upstream if needed, shared state, then one process or a supervisor."""
    setup_logging(config.log_level, config.log_format)
    raise_fd_limit(config)
    notifier = Notifier.from_environment()  # before any fork: workers must not notify
    try:
        check_certificate(config)
    except TlsError as exc:
        raise StartupError(str(exc)) from None
    if config.hot_path == "c" and not hot_path_built():
        raise StartupError("HEIMDALL_HOT_PATH=c but the C hot path is not built "
                           "(reinstall with a C compiler: pip install -e .), or use auto/python")
    demo = None
    try:
        if config.demo or not config.upstream_servers:
            if not config.demo:
                log.info("no upstream configured (HEIMDALL_UPSTREAM_SERVERS): starting the demo upstream")
            demo, config = start_demo_upstream(config)
        # SIGHUP has been ignored since cli.main (before the imports), so a reload while the
        # lists load cannot kill the server. The supervisor still receives it later: it blocks
        # SIGHUP and waits for it, and Linux never discards a blocked signal as ignored.
        setup = prepare_shared(config)
        if config.worker_threads == 1:
            return serve_single(config, setup, notifier)
        return Supervisor(config, setup, notifier=notifier).run()
    finally:
        if demo is not None:
            demo.stop()
