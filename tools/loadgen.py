"""The built-in load engine: `run_load(LoadConfig) -> dict` (schema heimdall.load/1).

Each generator process runs one tight, non-blocking loop over many connected
UDP sockets with epoll: no asyncio, no per-query objects beyond a tuple, so a
process spends its time in send/recv rather than in an event loop. Closed
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

import collections
import math
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import select
import signal
import socket
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tools import latency
from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.scenarios import (DEFAULT_CLIENTS, DEFAULT_CLIENTS_OTHER, HEADER_TAIL, KIND_BLOCKED,
                                      KIND_NAMES, RCODE_NAMES, SUCCESS_RCODES, TEST_TYPES, Scenario,
                                      build_scenario, read_queries_file)

SCHEMA = "heimdall.load/1"
BUSY_SATURATED = 0.90          # a process busy this much of the window is the bottleneck
CLIENTS_PER_PROCESS = 2500     # auto: one more process per this many clients (closed loop)
QPS_PER_PROCESS = 25000        # auto: one more process per this offered rate (open loop)
PROGRESS_NS = 100_000_000      # how often a process publishes its counters
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: kernel receive time, CLOCK_REALTIME
MAX_BURST = 2000               # open loop: sends per iteration before reading replies

# counter slots inside a worker (a list is the cheapest mutable counter in CPython)
SENT, RECEIVED, TIMEOUTS, LATE, MISMATCHED, SEND_ERRORS, ICMP_ERRORS, SUCCESSES, BLOCK_ZERO, BLOCK_FWD = range(10)
COUNTER_NAMES = ("sent", "received", "timeouts", "late", "mismatched", "send_errors", "icmp_errors",
                 "successes", "blocked_zero_ip", "blocked_forwarded")


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

    def resolved_clients(self) -> int:
        if self.clients is not None:
            return self.clients
        return DEFAULT_CLIENTS.get(self.test_type, DEFAULT_CLIENTS_OTHER)


@dataclass
class WorkerSpec:
    index: int
    workers: int
    family: int
    sockaddr: tuple
    clients: int
    rate: float | None
    timeout_ns: int
    warmup_ns: int
    duration_ns: int
    scenario: Scenario
    kernel_timestamps: bool = False


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


def runqueue_wait_s() -> float:
    """Seconds this process has waited runnable for a CPU (/proc schedstat; 0 where unavailable)."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


# ---------------------------------------------------------------- priming

def prime(family: int, sockaddr: tuple, questions: list[bytes], timeout_s: float,
          rounds: int = 3, window: int = 100) -> dict:
    """Ask each question once (retrying the unanswered) so the cache is warm before the window."""
    todo = list(dict.fromkeys(questions))
    answered = 0
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)
        s.setblocking(False)
        for _ in range(rounds):
            if not todo:
                break
            got = _prime_round(s, todo, timeout_s, window)
            answered += len(got)
            if not got:
                break
            todo = [q for i, q in enumerate(todo) if i not in got]
    return {"questions": len(set(questions)), "answered": answered}


def _prime_round(s: socket.socket, todo: list[bytes], timeout_s: float, window: int) -> set[int]:
    got: set[int] = set()
    inflight: dict[int, float] = {}
    nxt = lost = 0
    deadline_all = time.monotonic() + timeout_s * 3 + len(todo) / 2000
    while (nxt < len(todo) or inflight) and time.monotonic() < deadline_all:
        while nxt < len(todo) and len(inflight) < window:
            try:
                s.send((nxt & 0xFFFF).to_bytes(2, "big") + HEADER_TAIL + todo[nxt])
            except OSError:
                pass
            inflight[nxt] = time.monotonic()
            nxt += 1
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            while True:
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                qid = int.from_bytes(data[:2], "big")
                for i in [i for i in inflight if i & 0xFFFF == qid]:
                    del inflight[i]
                    got.add(i)
        now = time.monotonic()
        for i in [i for i, t in inflight.items() if now - t > timeout_s]:
            del inflight[i]
            lost += 1
        if lost >= window and not got:
            break  # a whole window unanswered: the server is not there, the run will say so
    return got


# ---------------------------------------------------------------- the worker

def _worker_entry(spec: WorkerSpec, progress: Any, start: Any, stop: Any, ready: Any, results: Any) -> None:
    """Process entry: ignore Ctrl-C (the parent decides), run, always send back a result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    try:
        result = _run_worker(spec, progress, start, stop, ready)
        if os.getppid() != parent:  # nobody will read it: do not wait on a full pipe at exit
            results.cancel_join_thread()
            return
        results.put(result)
    except BaseException as exc:  # noqa: BLE001 - reported by the parent as one line
        ready.put(spec.index)
        results.put({"index": spec.index, "error": f"{type(exc).__name__}: {exc}"})


def _open_sockets(spec: WorkerSpec) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for _ in range(spec.clients):
            s = socket.socket(spec.family, socket.SOCK_DGRAM)
            socks.append(s)
            s.setblocking(False)
            s.connect(spec.sockaddr)
    except OSError as exc:
        for s in socks:
            s.close()
        raise OSError(f"cannot open {spec.clients} client sockets: {exc.strerror}") from None
    return socks


def _run_worker(spec: WorkerSpec, progress: Any, start: Any, stop: Any, ready: Any) -> dict:  # noqa: C901
    socks = _open_sockets(spec)
    ep = select.epoll(max(len(socks), 1))
    maxfd = max(s.fileno() for s in socks)
    sends: list = [None] * (maxfd + 1)
    recvs: list = [None] * (maxfd + 1)
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
        sends[s.fileno()] = s.send
        if spec.kernel_timestamps:
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            recvs[s.fileno()] = s.recvmsg
        else:
            recvs[s.fileno()] = s.recv
    fds = [s.fileno() for s in socks]
    epfd, select_ = ep.fileno(), select.select
    ids = [int.from_bytes(os.urandom(2), "big") for _ in range(maxfd + 1)]
    ready.put(spec.index)
    while start.value == 0:
        if stop.value:
            break
        time.sleep(0.001)
    mono = time.monotonic_ns
    wall = time.time_ns
    unpack_ts = struct.Struct("qq").unpack
    t0 = start.value or mono()
    t_measure = t0 + spec.warmup_ns
    t_end = t_measure + spec.duration_ns
    timeout_ns = spec.timeout_ns
    closed = spec.rate is None
    interval_ns = int(1e9 / spec.rate) if spec.rate else 0

    nxt = spec.scenario.stream(spec.index, spec.workers).next
    cnt = [0] * len(COUNTER_NAMES)
    rcodes = [0] * (16 * len(KIND_NAMES))
    success = [frozenset(s) for s in SUCCESS_RCODES]
    lat: dict[int, int] = {}
    lat_get = lat.get
    klat: dict[int, int] = {}
    kts = spec.kernel_timestamps
    anc = None
    pending: dict[int, tuple] = {}
    expired: dict[int, bool] = {}
    deadlines: collections.deque = collections.deque()
    popleft, push = deadlines.popleft, deadlines.append
    quantize = latency.quantize
    cpu0 = cpu1 = None
    rq0 = rq1 = 0.0
    wall1 = None
    max_lag = 0
    interrupted = False
    base = spec.index * 4
    parent = os.getppid()

    def issue(fd: int) -> None:
        q, kind = nxt()
        qid = (ids[fd] + 1) & 0xFFFF
        ids[fd] = qid
        msg = qid.to_bytes(2, "big") + HEADER_TAIL + q
        now = mono()  # as close to the send as Python gets: the latency is the server's, not ours
        rt = wall() if kts else 0
        try:
            sends[fd](msg)
        except OSError:  # full buffer or an ICMP error from earlier: the query is lost
            cnt[SEND_ERRORS] += 1
        inwin = t_measure <= now < t_end
        if inwin:
            cnt[SENT] += 1
        key = fd << 16 | qid
        pending[key] = (now, q, kind, inwin, rt)
        push((now + timeout_ns, key, now))

    # closed loop: every client starts with one query in flight
    now = mono()
    while now < t0:
        time.sleep(min((t0 - now) / 1e9, 0.01))
        now = mono()
    sending = not stop.value
    if closed and sending:
        for fd in fds:
            issue(fd)
    next_send = now
    rr = 0
    next_progress = now + PROGRESS_NS
    drain_until = None
    again: list[int] = []

    while True:
        now = mono()
        # window transitions
        if sending:
            if cpu0 is None and now >= t_measure:
                cpu0, rq0 = time.process_time(), runqueue_wait_s()
            if now >= t_end:
                sending = False
            elif stop.value or (now >= next_progress and os.getppid() != parent):  # told to, or orphaned
                sending, interrupted = False, True
                t_end = max(now, t_measure)
            if not sending:
                cpu1, wall1, rq1 = time.process_time(), now, runqueue_wait_s()
                if cpu0 is None:
                    cpu0, rq0 = cpu1, rq1
                drain_until = now + timeout_ns + 20_000_000
        elif not pending or now > drain_until:
            break
        # open loop: send what is due
        if sending and not closed:
            burst = 0
            while next_send <= now and burst < MAX_BURST:
                issue(fds[rr])
                rr = rr + 1 if rr + 1 < len(fds) else 0
                next_send += interval_ns
                burst += 1
            if now - next_send > max_lag:
                max_lag = now - next_send
        # timeouts, in send order (the timeout is the same for every query)
        while deadlines and deadlines[0][0] <= now:
            _, key, ts = popleft()
            ent = pending.get(key)
            if ent is None or ent[0] != ts:
                continue
            del pending[key]
            expired[key] = ent[3]
            if ent[3]:
                cnt[TIMEOUTS] += 1
            if closed and sending:
                issue(key >> 16)
        if len(expired) > 200_000:
            expired.clear()
        # progress and the stop flag
        if now >= next_progress:
            next_progress = now + PROGRESS_NS
            progress[base] = cnt[SENT]
            progress[base + 1] = cnt[RECEIVED]
            progress[base + 2] = cnt[TIMEOUTS]
            progress[base + 3] = 1 if now < t_measure else 2
        # wait for replies, or until the next thing is due
        due = next_progress
        if deadlines and deadlines[0][0] < due:
            due = deadlines[0][0]
        if sending:
            due = min(due, t_end)
            if now < t_measure:
                due = min(due, t_measure)
            if not closed:
                due = min(due, next_send)
        wait = max(due - now, 0) / 1e9
        if 0 < wait < 0.002 and not closed:
            # epoll's timeout is whole milliseconds; select's is microseconds, and an epoll fd is
            # itself pollable, so short waits keep the open-loop schedule even instead of bursty
            events = ep.poll(0) if select_([epfd], (), (), wait)[0] else ()
        else:
            events = ep.poll(wait)
        for fd, _ev in events:
            recv = recvs[fd]
            while True:
                try:
                    if kts:
                        data, anc, _f, _a = recv(4096, 64)
                    else:
                        data = recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # ICMP port unreachable and the like
                    cnt[ICMP_ERRORS] += 1
                    break
                t = mono()
                if len(data) < 12:
                    cnt[MISMATCHED] += 1
                    continue
                key = fd << 16 | data[0] << 8 | data[1]
                ent = pending.pop(key, None)
                if ent is None:
                    if key in expired:
                        if expired.pop(key):
                            cnt[LATE] += 1
                    else:
                        cnt[MISMATCHED] += 1
                    continue
                t_send, q, kind, inwin, rt_send = ent
                if data[12:12 + len(q)] != q:
                    pending[key] = ent
                    cnt[MISMATCHED] += 1
                    continue
                if inwin:
                    rc = data[3] & 15
                    cnt[RECEIVED] += 1
                    rcodes[kind * 16 + rc] += 1
                    if rc in success[kind]:
                        cnt[SUCCESSES] += 1
                    if kind == KIND_BLOCKED and rc == 0:
                        rdlen = 16 if q[-3] == 28 else 4
                        cnt[BLOCK_ZERO if data[-rdlen:] == bytes(rdlen) else BLOCK_FWD] += 1
                    d = t - t_send
                    d = d - d % 100 if d < 10_000_000 else quantize(d)
                    lat[d] = lat_get(d, 0) + 1
                    if kts and anc:
                        sec, nsec = unpack_ts(anc[0][2])
                        d = sec * 1_000_000_000 + nsec - rt_send
                        d = d - d % 100 if d < 10_000_000 else quantize(max(d, 1))
                        klat[d] = klat.get(d, 0) + 1
                if closed and sending:
                    again.append(fd)
        if again:
            # answer the whole batch first, then send: fewer wake-up ping-pongs with the server
            for fd in again:
                issue(fd)
            again.clear()

    # whatever in-window query is still pending never got its answer
    cnt[TIMEOUTS] += sum(1 for ent in pending.values() if ent[3])
    progress[base] = cnt[SENT]
    progress[base + 1] = cnt[RECEIVED]
    progress[base + 2] = cnt[TIMEOUTS]
    progress[base + 3] = 3
    ep.close()
    for s in socks:
        s.close()
    window_ns = max(0, (wall1 or t_end) - t_measure) if not interrupted else max(0, t_end - t_measure)
    if cpu1 is None:
        cpu1 = time.process_time()
    return {
        "index": spec.index, "clients": spec.clients, "counters": dict(zip(COUNTER_NAMES, cnt)),
        "rcodes": rcodes, "latency_counts": lat, "kernel_latency_counts": klat, "cpu_s": cpu1 - (cpu0 if cpu0 is not None else cpu1),
        "runqueue_wait_s": rq1 - rq0, "window_s": window_ns / 1e9, "max_lag_ms": max_lag / 1e6, "interrupted": interrupted,
    }


# ---------------------------------------------------------------- the parent

@dataclass
class _Run:
    cfg: LoadConfig
    family: int
    sockaddr: tuple
    scenario: Scenario
    clients: int
    processes: int
    bad_lines: list = field(default_factory=list)
    primed: dict | None = None
    host_cpu_percent: float | None = None  # whole machine, warm-up to drain, 100 = every core busy
    interrupted: bool = False  # Ctrl-C/SIGTERM reached the parent (the workers may have finished already)


def prepare(cfg: LoadConfig) -> _Run:
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
    family, sockaddr = parse_server(cfg.server)
    queries, bad = None, []
    if cfg.queries_file is not None:
        parsed = read_queries_file(Path(cfg.queries_file))
        queries, bad = parsed.questions, parsed.bad_lines
    sc = build_scenario(cfg.test_type, cfg.zone, cfg.warm_set, cfg.blocklist_size, queries)
    processes = cfg.processes or auto_processes(clients, cfg.qps)
    processes = max(1, min(processes, clients))
    return _Run(cfg, family, sockaddr, sc, clients, processes, bad)


def run_load(cfg: LoadConfig, progress: bool = False) -> dict:
    """Run one load test and return its JSON-ready result (see module doc for the window rules)."""
    run = prepare(cfg)
    if cfg.engine == "dnsperf":
        from tools.dnsperf import run_dnsperf
        return run_dnsperf(run, progress)
    if cfg.engine != "builtin":
        raise ToolError(f"unknown engine {cfg.engine!r}: builtin or dnsperf")
    per = math.ceil(run.clients / run.processes)
    raise_fd_limit(per + 64)
    if cfg.prime and run.scenario.prime:
        run.primed = prime(run.family, run.sockaddr, run.scenario.prime, min(cfg.timeout_ms / 1000, 2.0))
    parts = _run_workers(run, progress)
    return build_result(run, parts, engine="builtin")


def _split(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def _run_workers(run: _Run, show_progress: bool) -> list[dict]:
    cfg = run.cfg
    ctx = mp.get_context("fork")  # no re-import of the caller's __main__ (spawn needs a main guard)
    prog = ctx.RawArray("q", 4 * run.processes)
    start = ctx.RawValue("q", 0)
    stop = ctx.RawValue("q", 0)
    ready, results = ctx.Queue(), ctx.Queue()
    rate = cfg.qps / run.processes if cfg.qps else None
    procs = []
    for i, n in enumerate(_split(run.clients, run.processes)):
        spec = WorkerSpec(i, run.processes, run.family, run.sockaddr, n, rate, int(cfg.timeout_ms * 1e6),
                          int(cfg.warmup * 1e9), int(cfg.duration * 1e9), run.scenario, cfg.kernel_timestamps)
        p = ctx.Process(target=_worker_entry, args=(spec, prog, start, stop, ready, results), daemon=True)
        p.start()
        procs.append(p)
    parts: list[dict] = []
    try:
        _wait_ready(procs, ready)
        psutil.cpu_percent(None)  # starts the host-CPU interval
        start.value = time.monotonic_ns() + 20_000_000
        parts = _collect(run, procs, prog, stop, results, show_progress)
        run.host_cpu_percent = psutil.cpu_percent(None)
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


def _wait_ready(procs: list, ready: Any) -> None:
    got, deadline = 0, time.monotonic() + 60
    while got < len(procs):
        try:
            ready.get(timeout=0.2)
            got += 1
        except queue_mod.Empty:
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                raise ToolError("load generator processes did not start", EXIT_ENVIRONMENT) from None


def _collect(run: _Run, procs: list, prog: Any, stop: Any, results: Any, show: bool) -> list[dict]:
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


def build_result(run: _Run, parts: list[dict], engine: str, extra: dict | None = None) -> dict:
    """Fold the per-process results into the heimdall.load/1 dictionary."""
    cfg = run.cfg
    tot = {name: sum(p["counters"][name] for p in parts) for name in COUNTER_NAMES}
    rc = [sum(p["rcodes"][i] for p in parts) for i in range(len(parts[0]["rcodes"]))] if parts else []
    counts = latency.merge_counts([p["latency_counts"] for p in parts])
    window = max((p["window_s"] for p in parts), default=0.0)
    interrupted = run.interrupted or any(p.get("interrupted") for p in parts)
    duration = window if (interrupted or engine != "builtin") else cfg.duration
    sent, received = tot["sent"], tot["received"]
    rcodes: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for i, n in enumerate(rc):
        if n:
            kind, code = KIND_NAMES[i // 16], i % 16
            name = RCODE_NAMES[code] if code < len(RCODE_NAMES) else f"RCODE{code}"
            rcodes[name] = rcodes.get(name, 0) + n
            by_kind.setdefault(kind, {})[name] = n
    rcode_errors = received - tot["successes"]
    errors = rcode_errors + tot["send_errors"]
    busy = [round(p["cpu_s"] / p["window_s"], 3) if p["window_s"] > 0 else 0.0 for p in parts]
    waited = [round(p.get("runqueue_wait_s", 0.0) / p["window_s"], 3) if p["window_s"] > 0 else 0.0 for p in parts]
    warnings: list[str] = []
    saturated = overloaded = False
    if engine == "builtin":
        if cfg.qps is None and any(b >= BUSY_SATURATED for b in busy):
            saturated = True
            warnings.append(f"generator saturated: a load process was busy {max(busy):.0%} of the window, "
                            "so the figures may measure the generator, not the server")
        if max(waited, default=0) >= 0.2:
            overloaded = True
            warnings.append(f"machine overloaded: a load process waited for a CPU {max(waited):.0%} of the "
                            "window; latencies include that wait")
        if cfg.qps is not None and duration > 0 and sent < 0.97 * cfg.qps * duration:
            saturated = True
            warnings.append(f"generator saturated: offered {cfg.qps:.0f} q/s but sent only "
                            f"{sent / duration:.0f} q/s")
    if extra:
        extra = dict(extra)
        saturated = saturated or bool(extra.pop("generator_saturated", False))
        warnings.extend(extra.pop("warnings", []))
    if run.bad_lines:
        warnings.append(f"{len(run.bad_lines)} bad lines skipped in {cfg.queries_file}")
    if sent and received == 0:
        warnings.append(f"no replies from {cfg.server}: is the server running?")
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "engine": engine,
        "test_type": cfg.test_type,
        "server": cfg.server,
        "mode": "closed" if cfg.qps is None else "open",
        "offered_qps": cfg.qps,
        "duration_s": round(duration, 6),
        "warmup_s": cfg.warmup,
        "timeout_ms": cfg.timeout_ms,
        "clients": run.clients,
        "processes": run.processes,
        "zone": cfg.zone,
        "queries_file": str(cfg.queries_file) if cfg.queries_file else None,
        "qps": round(received / duration, 3) if duration > 0 else 0.0,
        "sent": sent,
        "received": received,
        "successes": tot["successes"],
        "timeouts": tot["timeouts"],
        "errors": errors,
        "rcode_errors": rcode_errors,
        "send_errors": tot["send_errors"],
        "icmp_errors": tot["icmp_errors"],
        "late": tot["late"],
        "mismatched": tot["mismatched"],
        "response_rate": round(received / sent, 6) if sent else 0.0,
        "success_rate": round(tot["successes"] / sent, 6) if sent else 0.0,
        "error_rate": round(errors / sent, 6) if sent else 0.0,
        "rcodes": rcodes,
        "rcodes_by_kind": by_kind,
        "latency_us": latency.summarize(counts),
        "histogram": latency.histogram_json(counts),
        "generator": {
            "busy_per_process": busy,
            "runqueue_wait_per_process": waited,
            "cpu_percent": round(100 * sum(p["cpu_s"] for p in parts) / window, 1) if window else 0.0,
            "max_schedule_lag_ms": round(max((p["max_lag_ms"] for p in parts), default=0.0), 3),
            "host_cpu_percent": run.host_cpu_percent,
        },
        "generator_saturated": saturated,
        "machine_overloaded": overloaded,   # load processes waited >= 20 % of the window for a CPU
        "warnings": warnings,
        "primed": run.primed,
        "bad_lines": [{"line": n, "error": why} for n, why in run.bad_lines],
        "interrupted": interrupted,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    if cfg.kernel_timestamps and engine == "builtin":
        kcounts = latency.merge_counts([p.get("kernel_latency_counts", {}) for p in parts])
        klat = latency.summarize(kcounts)
        result["kernel_latency_us"] = klat
        ulat = result["latency_us"]
        own = (round(ulat["avg"] - klat["avg"], 1) if ulat["avg"] is not None and klat["avg"] is not None
               else None)
        result["generator"]["own_delay_us"] = own
        if own is not None and own > 0.5 * ulat["avg"]:
            warnings.append(f"the generator's own delay ({own:,.0f} us) is over half the measured average "
                            "latency: see kernel_latency_us for the server's share")
    if cfg.test_type == "blocking":
        result["blocking"] = {"blocked_replies": sum(by_kind.get("blocked", {}).values()),
                              "zero_ip_answers": tot["blocked_zero_ip"],
                              "forwarded_answers": tot["blocked_forwarded"],
                              "rcodes": by_kind.get("blocked", {})}
    if extra:
        result.update(extra)
    return result
