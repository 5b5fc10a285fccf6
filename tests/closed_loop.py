"""A small closed-loop DNS client for fault tests: every query is accounted for.

`ClosedLoop` runs in a background thread: `clients` UDP sockets (distinct
source ports, so SO_REUSEPORT spreads them over a server's workers), each
with at most one query in flight. A client sends, waits for the reply with
its ID (or `timeout`), records the outcome, waits `gap` seconds, sends the
next. Names come from `pick(client, seq) -> (qname, kind)`; `kind` is the
caller's label ("cached", "new", ...).

Each query becomes a `Rec`: client, name, kind, send and finish times
(time.monotonic), and the rcode, first answer address, or `None` for a
timeout (lost). Replies that arrive for a query already finished (late or
duplicate) are counted in `extra_replies`, never matched to a later query
(each query gets a fresh random ID).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import dns.message
import dns.rcode


@dataclass
class Rec:
    client: int
    name: str
    kind: str
    sent: float
    done: float = 0.0
    rcode: int | None = None  # None = no reply within the timeout (lost)
    address: str | None = None

    @property
    def lost(self) -> bool:
        return self.rcode is None

    @property
    def latency(self) -> float:
        return self.done - self.sent


@dataclass
class ClosedLoop:
    host: str
    port: int
    pick: Callable[[int, int], tuple[str, str]]
    clients: int = 8
    timeout: float = 1.5
    gap: float = 0.005
    records: list[Rec] = field(default_factory=list)
    extra_replies: int = 0
    unparsable: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.inflight: dict[int, tuple[int, Rec]] = {}  # client -> (id, rec): read by tests (GIL-safe snapshot)
        self.error: BaseException | None = None

    # --- control ---

    def start(self) -> "ClosedLoop":
        self._thread = threading.Thread(target=self._guarded, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Rec]:
        """Stop sending; wait (up to the timeout) for the queries in flight, then return all records."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 10)
            assert not self._thread.is_alive(), "load thread did not stop"
        if self.error is not None:
            raise self.error
        return self.records

    def __enter__(self) -> "ClosedLoop":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_for(self, seconds: float) -> None:
        time.sleep(seconds)

    # --- the loop ---

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in stop()
            self.error = exc

    def _run(self) -> None:
        socks = []
        ep = select.epoll()
        by_fd: dict[int, int] = {}
        try:
            for i in range(self.clients):
                s = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.connect((self.host, self.port))
                socks.append(s)
                by_fd[s.fileno()] = i
                ep.register(s.fileno(), select.EPOLLIN)
            seq = [0] * self.clients
            next_send = [time.monotonic() + i * self.gap / max(1, self.clients) for i in range(self.clients)]
            while True:
                now = time.monotonic()
                stopping = self._stop.is_set()
                if stopping and not self.inflight:
                    return
                for i in range(self.clients):
                    cur = self.inflight.get(i)
                    if cur is not None and now - cur[1].sent >= self.timeout:
                        cur[1].done = now
                        del self.inflight[i]
                        next_send[i] = now + self.gap
                        cur = None
                    if cur is None and not stopping and now >= next_send[i]:
                        name, kind = self.pick(i, seq[i])
                        seq[i] += 1
                        qid = struct.unpack("!H", os.urandom(2))[0]
                        q = dns.message.make_query(name, "A", id=qid)
                        rec = Rec(i, name, kind, time.monotonic())
                        self.records.append(rec)
                        self.inflight[i] = (qid, rec)
                        try:
                            socks[i].send(q.to_wire())
                        except OSError:
                            pass  # ECONNREFUSED from an earlier ICMP: the query counts as lost if unanswered
                wait = 0.05
                for i in range(self.clients):
                    cur = self.inflight.get(i)
                    t = cur[1].sent + self.timeout if cur is not None else next_send[i]
                    wait = min(wait, max(0.0, t - time.monotonic()))
                for fd, _ev in ep.poll(wait):
                    i = by_fd[fd]
                    while True:
                        try:
                            data = socks[i].recv(65535)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break  # ICMP error queued on the socket
                        self._reply(i, data, next_send)
        finally:
            ep.close()
            for s in socks:
                s.close()

    def _reply(self, i: int, data: bytes, next_send: list[float]) -> None:
        cur = self.inflight.get(i)
        if len(data) < 12 or cur is None or struct.unpack_from("!H", data)[0] != cur[0]:
            self.extra_replies += 1
            return
        rec = cur[1]
        try:
            msg = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001
            self.unparsable += 1
            return
        if str(msg.question[0].name).rstrip(".").lower() != rec.name.rstrip(".").lower() if msg.question else True:
            self.extra_replies += 1
            return
        rec.done = time.monotonic()
        rec.rcode = msg.rcode()
        for rrset in msg.answer:
            for rd in rrset:
                if hasattr(rd, "address"):
                    rec.address = rd.address
                    break
            if rec.address:
                break
        del self.inflight[i]
        next_send[i] = rec.done + self.gap


def summary(records: list[Rec]) -> dict[str, int]:
    """Counts by outcome: sent, lost, and per rcode name."""
    out = {"sent": len(records), "lost": sum(r.lost for r in records)}
    for r in records:
        if r.rcode is not None:
            key = dns.rcode.to_text(r.rcode)
            out[key] = out.get(key, 0) + 1
    return out
