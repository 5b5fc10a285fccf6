"""The built-in load engine: `run_load(LoadConfig) -> dict` (schema heimdall.load/1).

This module is the parent: it validates the config, starts the generator
processes (tools/load_worker.py: one tight epoll loop over many connected
UDP sockets each), shows progress and folds their results
(tools/load_result.py). Closed
loop: every client (socket) has one query in flight and sends the next on
the reply or the timeout. Open loop (`qps`): queries leave on a schedule,
round-robin over the sockets, whatever the replies do.

The window: all processes start together at a shared CLOCK_MONOTONIC instant,
run `warmup` seconds unmeasured, then `duration` seconds measured. A query
counts when it was *sent* inside the window; after the window the processes
stop sending and wait up to the timeout for those queries' replies. So
`sent = received + timeouts` and `qps = received / duration_s`.

Latency runs from just before `send` to just after `recv` returns, as dnsperf
measures it, so it includes the generator's own wake-up and queueing. With
`kernel_timestamps` each reply is also timed by its kernel arrival
(SO_TIMESTAMPNS): `kernel_latency_us` excludes the generator's delay, and
`generator.own_delay_us` says how much of the average latency was ours.
(It costs a recvmsg per reply, so it is off by default.)

Each process measures its own CPU time over the window; a process busy more
than 90 % of the window (closed loop) or an open loop that falls behind its
schedule means the generator, not the server, may be the limit: the result
says so in `generator_saturated` and `warnings`.
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.load_result import build_result
from tools.load_worker import WorkerSpec, worker_entry
from tools.priming import prime
from tools.resources import system_busy_seconds
from tools.scenarios import (
    DEFAULT_CLIENTS,
    DEFAULT_CLIENTS_OTHER,
    TEST_TYPES,
    Scenario,
    build_scenario,
    read_queries_file,
)
from tools.stream_clients import TRANSPORTS, StreamOptions

CLIENTS_PER_PROCESS = 2500     # auto: one more process per this many clients (closed loop)
QPS_PER_PROCESS = 25000        # auto: one more process per this offered rate (open loop)


@dataclass
class LoadConfig:
    """What to run; defaults follow the performance guide."""

    test_type: str = "cache-hit"
    server: str = "127.0.0.1:53"
    duration: float = 10.0
    clients: int | None = None        # None: 20, or 256 for high-concurrency
    timeout_ms: float = 1000.0
    qps: float | None = None          # None: closed loop
    warmup: float = 1.0
    zone: str = "bench.test"
    queries_file: Path | None = None
    processes: int | None = None      # None: auto
    engine: str = "builtin"           # builtin | dnsperf
    warm_set: int = 1000              # names in the cache-hit / mixed warm set
    blocklist_size: int = 1000        # blocked names the blocking scenario draws from
    prime: bool = True                # ask the warm set once before the window
    kernel_timestamps: bool = False   # also time replies by their kernel arrival (SO_TIMESTAMPNS)
    start_at_ns: int | None = None    # CLOCK_MONOTONIC instant the processes start (two runs in step)
    transport: str = "udp"            # udp | tcp | dot | doh | doq
    queries_per_connection: int = 0   # stream transports: queries per connection, 0 = persistent
    tls_server_name: str | None = None  # dot/doh: SNI and the name verified (default: the server's address)
    ca_file: Path | None = None       # dot/doh: the CA to trust (default: the system's)
    insecure: bool = False            # dot/doh, lab only: no certificate check

    def stream_options(self) -> StreamOptions:
        return StreamOptions(self.transport, self.queries_per_connection, self.tls_server_name,
                             str(self.ca_file) if self.ca_file else None, self.insecure)

    def resolved_clients(self) -> int:
        if self.clients is not None:
            return self.clients
        return DEFAULT_CLIENTS.get(self.test_type, DEFAULT_CLIENTS_OTHER)


def parse_server(server: str) -> tuple[int, tuple]:
    """'HOST:PORT', '[v6]:PORT' or 'HOST' (port 53) -> (family, sockaddr); ToolError if bad."""
    s = server.strip()
    host, port = s, "53"
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif s.count(":") == 1:
        host, port = s.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ToolError(f"bad server address {server!r}: expected HOST:PORT", EXIT_ENVIRONMENT)
    try:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ToolError(f"bad server address {server!r}: {exc.strerror}", EXIT_ENVIRONMENT) from None
    return info[0][0], info[0][4]


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards the hard limit; ToolError if `needed` cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, needed * 2))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise ToolError(f"{needed} sockets need a file-descriptor limit of {needed}, but the hard limit "
                        f"is {hard}: raise it (ulimit -Hn) or use fewer clients per process", EXIT_ENVIRONMENT)
    return soft


def auto_processes(clients: int, qps: float | None) -> int:
    """Enough processes to keep up, never more than the cores (the server needs CPU too)."""
    cores = os.cpu_count() or 1
    want = math.ceil(qps / QPS_PER_PROCESS) if qps else math.ceil(clients / CLIENTS_PER_PROCESS)
    return max(1, min(cores, want, clients))


@dataclass
class LoadRun:
    """One load run being prepared and measured; both engines read and fill it."""

    cfg: LoadConfig
    family: int
    sockaddr: tuple
    scenario: Scenario
    clients: int
    processes: int
    bad_lines: list = field(default_factory=list)
    primed: dict | None = None
    host_cpu_percent: float | None = None  # whole machine, warm-up to drain, 100 = every core busy
    start_late_s: float = 0.0  # start_at_ns had passed when the processes were ready
    interrupted: bool = False  # Ctrl-C/SIGTERM reached the parent (the workers may have finished already)


def prepare(cfg: LoadConfig) -> LoadRun:
    """Validate the config and build the scenario (shared by both engines)."""
    if cfg.test_type not in TEST_TYPES:
        raise ToolError(f"unknown test type {cfg.test_type!r}; choose from {', '.join(TEST_TYPES)}")
    if not cfg.duration > 0 or cfg.warmup < 0 or not cfg.timeout_ms > 0:
        raise ToolError("duration and timeout must be positive, warmup not negative")
    clients = cfg.resolved_clients()
    if clients < 1:
        raise ToolError("clients must be at least 1")
    if cfg.qps is not None and not cfg.qps > 0:
        raise ToolError("qps must be positive")
    check_transport(cfg)
    family, sockaddr = parse_server(cfg.server)
    queries, bad = None, []
    if cfg.queries_file is not None:
        parsed = read_queries_file(Path(cfg.queries_file))
        queries, bad = parsed.questions, parsed.bad_lines
    sc = build_scenario(cfg.test_type, cfg.zone, cfg.warm_set, cfg.blocklist_size, queries)
    processes = cfg.processes or auto_processes(clients, cfg.qps)
    processes = max(1, min(processes, clients))
    return LoadRun(cfg, family, sockaddr, sc, clients, processes, bad)


def check_transport(cfg: LoadConfig) -> None:
    """The transport options make sense together; ToolError naming the fix if not."""
    if cfg.transport not in TRANSPORTS:
        raise ToolError(f"unknown transport {cfg.transport!r}: choose from {', '.join(TRANSPORTS)}")
    if cfg.queries_per_connection < 0:
        raise ToolError("queries per connection must be 0 (persistent) or more")
    if cfg.transport == "udp" and cfg.queries_per_connection:
        raise ToolError("--queries-per-connection needs a connection: --transport tcp, dot, doh or doq")
    if cfg.transport in ("udp", "tcp") and (cfg.tls_server_name or cfg.ca_file or cfg.insecure):
        raise ToolError("--tls-server-name, --ca-file and --insecure go with --transport dot, doh or doq")
    if cfg.transport != "udp" and cfg.kernel_timestamps:
        raise ToolError("--kernel-timestamps times UDP datagrams only")
    if cfg.transport == "doq" and cfg.engine == "dnsperf":
        raise ToolError("dnsperf has no DNS over QUIC: --engine builtin for --transport doq")
    if cfg.transport == "doq" and importlib.util.find_spec("aioquic") is None:
        raise ToolError("--transport doq needs the aioquic package: pip install 'heimdall-dns[quic]'",
                        EXIT_ENVIRONMENT)
    if cfg.ca_file is not None and not Path(cfg.ca_file).is_file():
        raise ToolError(f"--ca-file {cfg.ca_file}: no such file", EXIT_ENVIRONMENT)


def primes_over_udp(cfg: LoadConfig) -> bool:
    """Priming asks the warm set over UDP on the server's port: DoT and DoH ports take no UDP, so
    there the warm-up alone fills the cache."""
    return cfg.prime and cfg.transport in ("udp", "tcp")


def run_load(cfg: LoadConfig, progress: bool = False) -> dict:
    """Run one load test and return its JSON-ready result (see module doc for the window rules)."""
    run = prepare(cfg)
    if cfg.engine == "dnsperf":
        from tools.dnsperf import run_dnsperf

        return run_dnsperf(run, progress)
    if cfg.engine != "builtin":
        raise ToolError(f"unknown engine {cfg.engine!r}: builtin or dnsperf")
    per = math.ceil(run.clients / run.processes)
    raise_fd_limit(per * (2 if cfg.transport != "udp" else 1) + 64)  # a retiring connection and its successor
    if primes_over_udp(cfg) and run.scenario.prime:
        run.primed = prime(run.family, run.sockaddr, run.scenario.prime, min(cfg.timeout_ms / 1000, 2.0))
    parts = _run_workers(run, progress)
    return build_result(run, parts, engine="builtin")


def _split(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def _run_workers(run: LoadRun, show_progress: bool) -> list[dict]:
    cfg = run.cfg
    ctx = mp.get_context("fork")  # no re-import of the caller's __main__ (spawn needs a main guard)
    prog = ctx.RawArray("q", 4 * run.processes)
    start = ctx.RawValue("q", 0)
    stop = ctx.RawValue("q", 0)
    ready, results = ctx.Queue(), ctx.Queue()
    rate = cfg.qps / run.processes if cfg.qps else None
    procs: list = []
    parts: list[dict] = []
    try:  # a Ctrl-C while the processes start must stop those already started, too
        for i, n in enumerate(_split(run.clients, run.processes)):
            spec = WorkerSpec(i, run.processes, run.family, run.sockaddr, n, rate, int(cfg.timeout_ms * 1e6),
                              int(cfg.warmup * 1e9), int(cfg.duration * 1e9), run.scenario, cfg.kernel_timestamps,
                              cfg.stream_options() if cfg.transport != "udp" else None)
            p = ctx.Process(target=worker_entry, args=(spec, prog, start, stop, ready, results), daemon=True)
            p.start()
            procs.append(p)
        _wait_ready(procs, ready)
        busy0, t0 = system_busy_seconds(), time.monotonic()
        start.value, run.start_late_s = start_instant(cfg.start_at_ns)
        parts = _collect(run, procs, prog, stop, results, show_progress)
        run.host_cpu_percent = host_cpu_percent(busy0, t0)
    finally:
        stop.value = 1
        for p in procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        raise ToolError(f"load generator process failed: {errors[0]}", EXIT_ENVIRONMENT)
    return parts


def host_cpu_percent(busy0: float, t0: float) -> float | None:
    """The machine's busy share since (busy0, t0), 100 = every core busy.

    Explicit readings rather than psutil.cpu_percent(None), whose interval is
    hidden module state keyed by thread ident.
    """
    elapsed = time.monotonic() - t0
    if elapsed <= 0:
        return None
    share = (system_busy_seconds() - busy0) / (elapsed * (psutil.cpu_count() or 1))
    return round(100 * min(max(share, 0.0), 1.0), 1)


def start_instant(wanted_ns: int | None) -> tuple[int, float]:
    """When the ready processes start: the instant asked for, or 20 ms from now when none was
    asked for or it has passed (and then how late the start is, in seconds)."""
    soon = time.monotonic_ns() + 20_000_000
    if wanted_ns is None or wanted_ns >= soon:
        return (wanted_ns or soon), 0.0
    return soon, (soon - wanted_ns) / 1e9


def _wait_ready(procs: list, ready: Any) -> None:
    got, deadline = 0, time.monotonic() + 60
    while got < len(procs):
        try:
            ready.get(timeout=0.2)
            got += 1
        except queue_mod.Empty:
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                raise ToolError("load generator processes did not start", EXIT_ENVIRONMENT) from None


def _collect(run: LoadRun, procs: list, prog: Any, stop: Any, results: Any, show: bool) -> list[dict]:
    """Wait for every process's result, showing progress; Ctrl-C ends the window early."""
    from tools.progress import LoadProgress

    cfg = run.cfg
    limit = time.monotonic() + cfg.warmup + cfg.duration + cfg.timeout_ms / 1000 + 30
    parts: list[dict] = []
    with LoadProgress(show, cfg, run.processes) as bar:
        while len(parts) < len(procs):
            try:
                try:
                    parts.append(results.get(timeout=0.25))
                except queue_mod.Empty:
                    pass
                bar.update(list(prog))
                if time.monotonic() > limit:
                    raise ToolError("load generator processes did not finish in time", EXIT_ENVIRONMENT)
                if len(parts) < len(procs) and not any(p.is_alive() for p in procs) and results.empty():
                    time.sleep(0.5)
                    if results.empty():
                        raise ToolError("a load generator process died without a result", EXIT_ENVIRONMENT)
            except KeyboardInterrupt:
                stop.value = 1
                run.interrupted = True
                bar.note("interrupted: finishing the window with what was measured so far")
    return parts
