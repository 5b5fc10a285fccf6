"""One load generator process: a tight epoll loop over many connected UDP sockets.

No asyncio and no per-query objects beyond a tuple, so the process spends its
time in send/recv rather than in an event loop. The loop's state lives in
local variables and closures on purpose: in CPython a local is the cheapest
thing to read, and this loop runs once per query at tens of thousands of
queries a second. See tools/loadgen.py for the window rules it follows.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tools import latency
from tools.scenarios import HEADER_TAIL, KIND_BLOCKED, KIND_NAMES, SUCCESS_RCODES, Scenario

if TYPE_CHECKING:
    from tools.stream_clients import StreamOptions

PROGRESS_NS = 100_000_000      # how often a process publishes its counters
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: kernel receive time, CLOCK_REALTIME
MAX_BURST = 2000               # open loop: sends per iteration before reading replies
EXPIRED_KEEP = 200_000         # timed-out keys remembered to tell late replies from mismatched ones
FD_SETSIZE = 1024              # select() takes descriptors below it only

# counter slots inside a worker (a list is the cheapest mutable counter in CPython)
SENT, RECEIVED, TIMEOUTS, LATE, MISMATCHED, SEND_ERRORS, ICMP_ERRORS, SUCCESSES, BLOCK_ZERO, BLOCK_FWD = range(10)
COUNTER_NAMES = ("sent", "received", "timeouts", "late", "mismatched", "send_errors", "icmp_errors",
                 "successes", "blocked_zero_ip", "blocked_forwarded")


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
    stream: "StreamOptions | None" = None   # TCP, DoT or DoH clients (tools/stream_worker.py); None: UDP


def runqueue_wait_s() -> float:
    """Seconds this process has waited runnable for a CPU (/proc schedstat; 0 where unavailable)."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def worker_entry(spec: WorkerSpec, progress: Any, start: Any, stop: Any, ready: Any, results: Any) -> None:
    """Process entry: ignore Ctrl-C (the parent decides), run, always send back a result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    try:
        if spec.stream is not None and spec.stream.stream:
            from tools.stream_worker import run_stream_worker

            result = run_stream_worker(spec, progress, start, stop, ready)
        else:
            result = run_worker(spec, progress, start, stop, ready)
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


def _register(spec: WorkerSpec, socks: list[socket.socket], ep: select.epoll) -> tuple[list, list]:
    """Per-fd send and receive functions, indexed by fd (a list index is cheaper than a dict)."""
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
    return sends, recvs


def _wait_for_start(start: Any, stop: Any) -> None:
    while start.value == 0:
        if stop.value:
            break
        time.sleep(0.001)


def run_worker(spec: WorkerSpec, progress: Any, start: Any, stop: Any, ready: Any) -> dict:  # noqa: C901
    """Run the window; returns this process's counters, rcodes, latency counts and CPU figures."""
    ep = select.epoll()  # before the sockets: the lowest free descriptor, which select() can take
    socks = _open_sockets(spec)
    sends, recvs = _register(spec, socks, ep)
    fds = [s.fileno() for s in socks]
    epfd, select_ = ep.fileno(), select.select
    fine_waits = epfd < FD_SETSIZE  # select() takes no descriptor beyond it (a parent holding many)
    ids = [int.from_bytes(os.urandom(2), "big") for _ in range(len(sends))]
    ready.put(spec.index)
    _wait_for_start(start, stop)
    mono = time.monotonic_ns
    wall = time.time_ns
    t0 = start.value or mono()
    t_measure = t0 + spec.warmup_ns
    t_end = t_measure + spec.duration_ns
    timeout_ns = spec.timeout_ns
    closed = spec.rate is None
    interval_ns = int(1e9 / spec.rate) if spec.rate else 0

    nxt = spec.scenario.stream(spec.index, spec.workers).next
    cnt = [0] * len(COUNTER_NAMES)
    rcodes = [0] * (16 * len(KIND_NAMES))
    lat: dict[int, int] = {}
    klat: dict[int, int] = {}
    kts = spec.kernel_timestamps
    pending: dict[int, tuple] = {}
    expired: dict[int, bool] = {}
    deadlines: collections.deque = collections.deque()
    push = deadlines.append
    cpu0 = cpu1 = None
    rq0 = rq1 = 0.0
    wall1 = None
    max_lag = 0
    interrupted = False
    base = spec.index * 4
    parent = os.getppid()
    again: list[int] = []

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

    expire = _expirer(deadlines, pending, expired, cnt, issue)
    drain = _reply_reader(recvs, kts, cnt, rcodes, lat, klat, pending, expired, again, closed)

    # closed loop: every client starts with one query in flight
    now = _sleep_until(t0)
    sending = not stop.value
    if closed and sending:
        for fd in fds:
            issue(fd)
    next_send = now
    rr = 0
    next_progress = now + PROGRESS_NS
    drain_until = now  # reset when sending stops; only read after that, or with nothing ever sent (no pending)

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
        expire(now, closed and sending)
        if now >= next_progress:
            next_progress = now + PROGRESS_NS
            _publish(progress, base, cnt, 1 if now < t_measure else 2)
        # wait for replies, or until the next thing is due
        due = next_progress if not deadlines or deadlines[0][0] >= next_progress else deadlines[0][0]
        if sending:
            due = min(due, t_end, next_send) if not closed else min(due, t_end)
            if now < t_measure:
                due = min(due, t_measure)
        wait = max(due - now, 0) / 1e9
        if 0 < wait < 0.002 and not closed and fine_waits:
            # epoll's timeout is whole milliseconds; select's is microseconds, and an epoll fd is
            # itself pollable, so short waits keep the open-loop schedule even instead of bursty
            events = ep.poll(0) if select_([epfd], (), (), wait)[0] else ()
        else:
            events = ep.poll(wait)
        for fd, _ev in events:
            drain(fd, sending)
        if again:
            # answer the whole batch first, then send: fewer wake-up ping-pongs with the server
            for fd in again:
                issue(fd)
            again.clear()

    # whatever in-window query is still pending never got its answer
    cnt[TIMEOUTS] += sum(1 for ent in pending.values() if ent[3])
    _publish(progress, base, cnt, 3)
    ep.close()
    for s in socks:
        s.close()
    window_ns = max(0, (wall1 or t_end) - t_measure) if not interrupted else max(0, t_end - t_measure)
    if cpu1 is None:
        cpu1 = time.process_time()
    cpu_s = cpu1 - (cpu0 if cpu0 is not None else cpu1)
    return {"index": spec.index, "clients": spec.clients, "counters": dict(zip(COUNTER_NAMES, cnt)),
            "rcodes": rcodes, "latency_counts": lat, "kernel_latency_counts": klat, "cpu_s": cpu_s,
            "runqueue_wait_s": rq1 - rq0, "window_s": window_ns / 1e9, "max_lag_ms": max_lag / 1e6,
            "interrupted": interrupted}


def _expirer(deadlines: collections.deque, pending: dict[int, tuple], expired: dict[int, bool],
             cnt: list[int], issue: Callable[[int], None]) -> Callable[[int, bool], None]:
    """The function that times out due queries, in send order (the timeout is the same for
    every query), and with `resend` (closed loop) sends each client's next query."""
    popleft = deadlines.popleft

    def expire(now: int, resend: bool) -> None:
        while deadlines and deadlines[0][0] <= now:
            _, key, ts = popleft()
            ent = pending.get(key)
            if ent is None or ent[0] != ts:
                continue
            del pending[key]
            expired[key] = ent[3]
            if ent[3]:
                cnt[TIMEOUTS] += 1
            if resend:
                issue(key >> 16)
        if len(expired) > EXPIRED_KEEP:
            expired.clear()

    return expire


def _publish(progress: Any, base: int, cnt: list[int], phase: int) -> None:
    """Counters for the parent's progress line; phase 1 warm-up, 2 measuring, 3 done."""
    progress[base] = cnt[SENT]
    progress[base + 1] = cnt[RECEIVED]
    progress[base + 2] = cnt[TIMEOUTS]
    progress[base + 3] = phase


def _sleep_until(t: int) -> int:
    """Sleep until CLOCK_MONOTONIC reaches t (ns); returns the time then."""
    now = time.monotonic_ns()
    while now < t:
        time.sleep(min((t - now) / 1e9, 0.01))
        now = time.monotonic_ns()
    return now


def _reply_reader(recvs: list, kts: bool, cnt: list[int], rcodes: list[int], lat: dict[int, int],
                  klat: dict[int, int], pending: dict[int, tuple], expired: dict[int, bool],
                  again: list[int], closed: bool) -> Callable[[int, bool], None]:
    """The function that reads every queued reply of one socket and counts it.

    A closure over the worker's counters, so the per-reply work reads locals
    only; `again` collects the sockets whose next closed-loop query is due."""
    mono = time.monotonic_ns
    lat_get = lat.get
    quantize = latency.quantize
    unpack_ts = struct.Struct("qq").unpack
    success = [frozenset(s) for s in SUCCESS_RCODES]

    def drain(fd: int, sending: bool) -> None:
        recv = recvs[fd]
        anc = None
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

    return drain
