"""One load generator process over connections: TCP, DoT, DoH or DoQ clients in one epoll loop.

The same window, counters and result as the UDP worker (tools/load_worker.py);
what differs is that a client is a connection (tools/stream_clients.py):

* a client opens its connection when its first query is due, and with
  `queries_per_connection` N > 0 a new one after every N queries (the old one
  closes once its queries are answered or timed out); N = 0 keeps one
  connection for the whole run;
* closed loop: one query in flight per client; open loop: queries go
  round-robin over the clients and pipeline on their connections;
* latency runs from the moment a query is due, so a query that waits for
  its connection's connect and TLS handshake carries that wait: with one
  query per connection, the latency is a whole fresh client's;
* a connection that fails (refused, reset, TLS handshake refused) takes its
  unanswered queries with it: they count as timeouts (lost) at once, the
  failure is counted by kind, and a closed-loop client tries again after
  RETRY_NS, so a bad certificate shows as counted failures, not a crash.
"""

from __future__ import annotations

import collections
import os
import select
import time
from typing import Any, Callable

from tools import latency
from tools.load_worker import (
    COUNTER_NAMES,
    FD_SETSIZE,
    MISMATCHED,
    PROGRESS_NS,
    RECEIVED,
    SEND_ERRORS,
    SENT,
    SUCCESSES,
    TIMEOUTS,
    WorkerSpec,
    _publish,
    _sleep_until,
    _wait_for_start,
    runqueue_wait_s,
)
from tools.scenarios import HEADER_TAIL, KIND_NAMES, SUCCESS_RCODES
from tools.stream_clients import ConnectionLost, SendFailed, StreamOptions, TcpConnection, TlsConnection, tls_context

RETRY_NS = 100_000_000   # a closed-loop client whose connection failed tries again after this
MAX_BURST = 2000         # open loop: sends per iteration before reading replies
IN, OUT = select.EPOLLIN, select.EPOLLIN | select.EPOLLOUT
TIMER = 1 << 30  # not an epoll flag: a connection's own timer is due (DoQ)
CONN_STATS = ("opened", "connect_failures", "handshake_failures", "closed_by_server", "reset",
              "lost_with_connection", "http_errors")


def connection_factory(spec: WorkerSpec) -> Callable[[int], TcpConnection]:
    """client index -> a new connection of the spec's transport (connect already under way)."""
    opts: StreamOptions = spec.stream  # type: ignore[assignment]
    fam, addr = spec.family, spec.sockaddr
    if opts.transport == "tcp":
        return lambda c: TcpConnection(fam, addr, c)
    if opts.transport == "doq":
        from tools.doq_client import DoqConnection, quic_configuration

        config = quic_configuration(opts, opts.tls_server_name or addr[0])
        return lambda c: DoqConnection(fam, addr, c, config)  # type: ignore[return-value]
    ctx = tls_context(opts)
    name = opts.tls_server_name or addr[0]
    if opts.transport == "dot":
        return lambda c: TlsConnection(fam, addr, c, ctx, name)
    from tools.doh_client import DohConnection

    host = f"[{name}]" if ":" in name else name
    authority = host if addr[1] == 443 else f"{host}:{addr[1]}"
    return lambda c: DohConnection(fam, addr, c, ctx, name, authority)


class ClientPool:
    """The clients of one process and their connections: sending, matching replies, timeouts, failures.

    `sending` and `closed` decide whether an answer or a loss asks the
    client's next query (closed loop); `again` and `retries` hold those
    next queries for the loop to send."""

    def __init__(self, spec: WorkerSpec, t_measure: int, t_end: int) -> None:
        self.ep = select.epoll()
        self.factory = connection_factory(spec)
        self.per_conn = spec.stream.queries_per_connection if spec.stream else 0
        self.current: list[TcpConnection | None] = [None] * spec.clients
        self.conns: dict[int, TcpConnection] = {}
        self.ids = [int.from_bytes(os.urandom(2), "big") for _ in range(spec.clients)]
        self.stats = dict.fromkeys(CONN_STATS, 0)
        self.first_error: str | None = None
        self.nxt = spec.scenario.stream(spec.index, spec.workers).next
        self.cnt = [0] * len(COUNTER_NAMES)
        self.rcodes = [0] * (16 * len(KIND_NAMES))
        self.lat: dict[int, int] = {}
        self.pending: dict[int, tuple] = {}
        self.deadlines: collections.deque = collections.deque()
        self.retries: collections.deque = collections.deque()
        self.again: list[int] = []
        self.t_measure, self.t_end = t_measure, t_end
        self.timeout_ns = spec.timeout_ns
        self.closed = spec.rate is None
        self.sending = True
        self.timed = spec.stream is not None and spec.stream.transport == "doq"  # its connections keep timers
        self.success = [frozenset(s) for s in SUCCESS_RCODES]

    def failed(self, exc: ConnectionLost) -> None:
        self.stats["handshake_failures" if exc.handshake else "connect_failures" if exc.connect else "reset"] += 1
        self.first_error = self.first_error or exc.reason

    def arm(self, conn: TcpConnection) -> None:
        want = conn.wants_write()
        if want != conn.polled_out:
            conn.polled_out = want
            self.ep.modify(conn.fd, OUT if want else IN)

    def close(self, conn: TcpConnection) -> None:
        """Close it; its unanswered queries are lost now (a closed-loop client asks again later)."""
        if self.conns.get(conn.fd) is not conn:
            return  # closed already (and its descriptor perhaps reused by another connection)
        del self.conns[conn.fd]
        self.ep.unregister(conn.fd)
        conn.close()
        if self.current[conn.client] is conn:
            self.current[conn.client] = None
        self.stats["http_errors"] += getattr(conn, "http_errors", 0)
        lost = 0
        for key in conn.outstanding:
            ent = self.pending.pop(key, None)
            if ent is not None:
                lost += 1
                if ent[3]:
                    self.cnt[TIMEOUTS] += 1
        self.stats["lost_with_connection"] += lost
        if lost and self.closed and self.sending:
            self.retries.append((time.monotonic_ns() + RETRY_NS, conn.client))

    def open_for(self, c: int) -> TcpConnection | None:
        try:
            conn = self.factory(c)
        except ConnectionLost as exc:
            self.failed(exc)
            return None
        self.stats["opened"] += 1
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, OUT)
        self.current[c] = conn
        return conn

    def issue(self, c: int) -> None:
        """Client c's next query, on its connection (opened first when it has none)."""
        q, kind = self.nxt()
        now = time.monotonic_ns()
        inwin = self.t_measure <= now < self.t_end
        if inwin:
            self.cnt[SENT] += 1
        conn = self.current[c] or self.open_for(c)
        if conn is None:  # could not even start a connect: the query is lost now
            if inwin:
                self.cnt[TIMEOUTS] += 1
            if self.closed:
                self.retries.append((now + RETRY_NS, c))
            return
        qid = (self.ids[c] + 1) & 0xFFFF
        self.ids[c] = qid
        key = c << 16 | qid
        self.pending[key] = (now, q, kind, inwin)
        conn.outstanding.add(key)
        try:
            conn.send(qid.to_bytes(2, "big") + HEADER_TAIL + q)
        except SendFailed:
            self.cnt[SEND_ERRORS] += 1
        except ConnectionLost as exc:
            self.failed(exc)
            self.close(conn)
            return
        self.deadlines.append((now + self.timeout_ns, key, now, conn))
        conn.queries += 1
        if self.per_conn and conn.queries >= self.per_conn:
            conn.retired = True
            self.current[c] = None
        self.arm(conn)

    def answered(self, conn: TcpConnection, data: bytes, t: int) -> None:
        cnt = self.cnt
        if len(data) < 12:
            cnt[MISMATCHED] += 1
            return
        key = conn.client << 16 | data[0] << 8 | data[1]
        ent = self.pending.get(key)
        if ent is None or key not in conn.outstanding or data[12:12 + len(ent[1])] != ent[1]:
            cnt[MISMATCHED] += 1
            return
        del self.pending[key]
        conn.outstanding.discard(key)
        t_send, q, kind, inwin = ent
        if inwin:
            rc = data[3] & 15
            cnt[RECEIVED] += 1
            self.rcodes[kind * 16 + rc] += 1
            if rc in self.success[kind]:
                cnt[SUCCESSES] += 1
            d = t - t_send
            d = d - d % 100 if d < 10_000_000 else latency.quantize(d)
            self.lat[d] = self.lat.get(d, 0) + 1
        if self.closed and self.sending:
            self.again.append(conn.client)

    def expire(self, now: int) -> None:
        """Time out due queries in send order (one timeout for all); closed loop: ask the next."""
        deadlines, pending = self.deadlines, self.pending
        while deadlines and deadlines[0][0] <= now:
            _, key, ts, conn = deadlines.popleft()
            ent = pending.get(key)
            if ent is None or ent[0] != ts:
                continue
            del pending[key]
            conn.outstanding.discard(key)
            conn.abandon(key & 0xFFFF)
            if ent[3]:
                self.cnt[TIMEOUTS] += 1
            if conn.retired and not conn.outstanding:
                self.close(conn)
            if self.closed and self.sending:
                self.again.append(key >> 16)

    def tick(self, now: int) -> int | None:
        """Run the connection timers (QUIC's acks and loss recovery) that are due at `now`; when the
        next one is due (ns), or None, for the loop's wait: one pass over the connections for both."""
        if not self.timed:
            return None
        due = None
        for conn in list(self.conns.values()):
            at = conn.timer_at  # type: ignore[attr-defined]
            if at is not None and at * 1e9 <= now:
                self.event(conn.fd, TIMER)
                if self.conns.get(conn.fd) is not conn:
                    continue  # closed by what its timer found
                at = conn.timer_at  # type: ignore[attr-defined]
            if at is not None and (due is None or at * 1e9 < due):
                due = int(at * 1e9)
        return due

    def event(self, fd: int, ev: int) -> None:
        """One epoll event (or TIMER): advance the connection, count what arrived, close it when it is done."""
        conn = self.conns.get(fd)
        if conn is None:
            return
        try:
            if ev & select.EPOLLOUT:
                conn.on_writable()
            if ev & TIMER:
                t = time.monotonic_ns()
                for data in conn.on_timer():  # type: ignore[attr-defined]
                    self.answered(conn, data, t)
            elif ev & ~select.EPOLLOUT:
                t = time.monotonic_ns()
                for data in conn.on_readable():
                    self.answered(conn, data, t)
        except ConnectionLost as exc:
            self.failed(exc)
            self.close(conn)
            return
        if conn.eof:
            if conn.outstanding or not conn.retired:
                self.stats["closed_by_server"] += 1
            self.close(conn)
        elif conn.retired and not conn.outstanding:
            self.close(conn)
        else:
            self.arm(conn)

    def shut(self) -> None:
        """End of the run: whatever in-window query is still pending never got its answer."""
        self.cnt[TIMEOUTS] += sum(1 for ent in self.pending.values() if ent[3])
        for conn in list(self.conns.values()):
            self.stats["http_errors"] += getattr(conn, "http_errors", 0)
            conn.close()
        self.ep.close()


def run_stream_worker(spec: WorkerSpec, progress: Any, start: Any, stop: Any, ready: Any) -> dict:  # noqa: C901
    """Run the window over connections; returns the UDP worker's result plus `connections`."""
    pool = ClientPool(spec, 0, 0)  # before the start: the TLS context reads its CA file here
    ready.put(spec.index)
    _wait_for_start(start, stop)
    mono = time.monotonic_ns
    t0 = start.value or mono()
    t_measure = t0 + spec.warmup_ns
    t_end = t_measure + spec.duration_ns
    pool.t_measure, pool.t_end = t_measure, t_end
    closed = pool.closed
    interval_ns = int(1e9 / spec.rate) if spec.rate else 0
    cpu0 = cpu1 = None
    rq0 = rq1 = 0.0
    wall1 = None
    max_lag = 0
    interrupted = False
    base = spec.index * 4
    parent = os.getppid()
    retries, deadlines, again = pool.retries, pool.deadlines, pool.again
    epfd = pool.ep.fileno()
    fine_waits = not closed and epfd < FD_SETSIZE
    now = _sleep_until(t0)
    sending = pool.sending = not stop.value
    if closed and sending:
        for c in range(spec.clients):
            pool.issue(c)
    next_send = now
    rr = 0
    next_progress = now + PROGRESS_NS
    drain_until = now
    while True:
        now = mono()
        if sending:
            if cpu0 is None and now >= t_measure:
                cpu0, rq0 = time.process_time(), runqueue_wait_s()
            if now >= t_end:
                sending = False
            elif stop.value or (now >= next_progress and os.getppid() != parent):
                sending, interrupted = False, True
                t_end = pool.t_end = max(now, t_measure)
            if not sending:
                pool.sending = False
                cpu1, wall1, rq1 = time.process_time(), now, runqueue_wait_s()
                if cpu0 is None:
                    cpu0, rq0 = cpu1, rq1
                drain_until = now + spec.timeout_ns + 20_000_000
                retries.clear()
        elif not pool.pending or now > drain_until:
            break
        if sending and not closed:
            burst = 0
            while next_send <= now and burst < MAX_BURST:
                pool.issue(rr)
                rr = rr + 1 if rr + 1 < spec.clients else 0
                next_send += interval_ns
                burst += 1
            max_lag = max(max_lag, now - next_send)
        while retries and retries[0][0] <= now:
            pool.issue(retries.popleft()[1])
        pool.expire(now)
        timer = pool.tick(now)
        if now >= next_progress:
            next_progress = now + PROGRESS_NS
            _publish(progress, base, pool.cnt, 1 if now < t_measure else 2)
        due = next_progress if not deadlines or deadlines[0][0] >= next_progress else deadlines[0][0]
        if retries:
            due = min(due, retries[0][0])
        if timer is not None:
            due = min(due, timer)
        if sending:
            due = min(due, t_end, next_send) if not closed else min(due, t_end)
            if now < t_measure:
                due = min(due, t_measure)
        wait = max(due - now, 0) / 1e9
        if 0 < wait < 0.002 and fine_waits:  # as the UDP worker: an even open-loop schedule, not 1 ms bursts
            events = pool.ep.poll(0) if select.select([epfd], (), (), wait)[0] else ()
        else:
            events = pool.ep.poll(wait)
        for fd, ev in events:
            pool.event(fd, ev)
        if again:
            for c in again:
                pool.issue(c)
            again.clear()
    pool.shut()
    _publish(progress, base, pool.cnt, 3)
    window_ns = max(0, (wall1 or t_end) - t_measure) if not interrupted else max(0, t_end - t_measure)
    if cpu1 is None:
        cpu1 = time.process_time()
    cpu_s = cpu1 - (cpu0 if cpu0 is not None else cpu1)
    return {"index": spec.index, "clients": spec.clients, "counters": dict(zip(COUNTER_NAMES, pool.cnt)),
            "rcodes": pool.rcodes, "latency_counts": pool.lat, "kernel_latency_counts": {}, "cpu_s": cpu_s,
            "runqueue_wait_s": rq1 - rq0, "window_s": window_ns / 1e9, "max_lag_ms": max_lag / 1e6,
            "interrupted": interrupted, "connections": pool.stats, "first_error": pool.first_error}
