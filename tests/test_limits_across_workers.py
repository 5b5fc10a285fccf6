"""Limits that mean the same with one worker and with two: per client, global, queries in flight.

Real parts: `heimdall serve` with 1 and 2 workers, the session's NSD upstream (or a silent one),
real datagrams from loopback source addresses and ports. The kernel would spread a client's ports
over the workers; heimdall/steering.py keeps each client address in one worker, and
heimdall/workershare.py counts the global bucket and the queries in flight for all of them.
"""

from __future__ import annotations

import select
import socket
import time

import dns.message
import pytest

from heimdall_server import HeimdallProcess
from tools.loadgen import LoadConfig, run_load
from udp_responder import UdpResponder

RATE_LIMITED = {"HEIMDALL_ENABLE_RATE_LIMITING": "true", "HEIMDALL_RATE_LIMIT_ACTION": "refused"}
NOERROR, REFUSED, SERVFAIL = 0, 5, 2


def servers(upstream: str, env: dict[str, str]):
    for workers in ("1", "2"):
        yield workers, HeimdallProcess([upstream], env=dict(env, HEIMDALL_WORKER_THREADS=workers))


def test_the_per_client_limit_holds_whatever_the_source_ports(upstream):
    """A client on 127.0.0.1 spraying 2,000 q/s from 1,000 source ports for 3 s, limited to 200 q/s."""
    env = dict(RATE_LIMITED, HEIMDALL_QUERIES_PER_SECOND_PER_IP="200", HEIMDALL_BURST_SIZE_PER_IP="50")
    rates = {}
    for workers, proc in servers(upstream.addr, env):
        with proc as srv:
            r = run_load(LoadConfig(test_type="cache-hit", server=f"127.0.0.1:{srv.port}", duration=3, warmup=0.5,
                                    clients=1000, qps=2000, prime=False, timeout_ms=500))
            rates[workers] = r["rcodes"].get("NOERROR", 0) / 3
            assert r["rcodes"].get("REFUSED", 0) > 4000, r["rcodes"]  # the rest was turned down, not lost
            assert "cannot steer" not in srv.log, srv.log
    assert 180 <= rates["1"] <= 220 and 180 <= rates["2"] <= 220, rates  # unsteered, two workers would pass ~400


def spray(port: int, sources: list[str], qps: float, seconds: float) -> dict[int, int]:
    """`qps` queries a second for `seconds`, round robin over 8 sockets per source address:
    how many replies of each rcode."""
    socks = []
    for src in sources:
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            s.setblocking(False)
            socks.append(s)
    query = bytearray(dns.message.make_query("www.example.test", "A").to_wire())
    rcodes: dict[int, int] = {}

    def drain(wait: float) -> None:
        """Read every reply that is there; with `wait`, until none came for that long."""
        while select.select(socks, [], [], wait)[0]:
            for s in socks:
                try:
                    while True:
                        data = s.recv(512)
                        rcodes[data[3] & 0x0F] = rcodes.get(data[3] & 0x0F, 0) + 1
                except BlockingIOError:
                    pass

    start, sent = time.monotonic(), 0
    while (now := time.monotonic()) < start + seconds:
        due = int((now - start) * qps)
        while sent < due:
            query[0:2] = (sent & 0xFFFF).to_bytes(2, "big")
            socks[sent % len(socks)].sendto(bytes(query), ("127.0.0.1", port))
            sent += 1
        drain(0)
        time.sleep(0.005)
    drain(0.3)
    for s in socks:
        s.close()
    return rcodes


@pytest.mark.parametrize("sources", [["127.0.0.1"], [f"127.0.0.{i}" for i in range(1, 9)]],
                         ids=["one-client", "eight-clients"])
def test_the_global_limit_is_one_bucket_for_every_worker(upstream, sources):
    """300 q/s for the whole server, offered 1,500 q/s for 3 s: one client (which lives in one worker)
    and eight (spread over both) get 300 q/s after the first second's burst, with 1 worker and 2."""
    env = dict(RATE_LIMITED, HEIMDALL_GLOBAL_QUERIES_PER_SECOND="300", HEIMDALL_QUERIES_PER_SECOND_PER_IP="1e6",
               HEIMDALL_BURST_SIZE_PER_IP="1e6")
    rates = {}
    for workers, proc in servers(upstream.addr, env):
        with proc as srv:
            rcodes = spray(srv.port, sources, 1500, 3)
            rates[workers] = (rcodes.get(NOERROR, 0) - 300) / 3  # less the burst: one second's worth
            assert rcodes.get(REFUSED, 0) > 2000, rcodes
    assert all(270 <= r <= 330 for r in rates.values()), rates


class Silent(UdpResponder):
    """An upstream that never answers: every miss stays in flight until the upstream timeout."""

    def handle(self, data: bytes, src: tuple) -> None:
        pass


def test_queries_in_flight_are_bounded_for_all_workers_together():
    """HEIMDALL_MAX_INFLIGHT=40 and 100 misses at once from 100 source ports: 40 wait on the silent
    upstream, 60 get SERVFAIL at once, with one worker and with two (the kernel spreads the ports
    over both, each sees part of the 40). Without locks, two workers that check the total in the
    same instant both admit a query (heimdall/workershare.py), so with two the bound may be passed
    by one: 59 or 60 SERVFAIL. Without the sharing each worker would admit 40 and none would."""
    env = {"HEIMDALL_MAX_INFLIGHT": "40", "HEIMDALL_UPSTREAM_TIMEOUT": "5"}
    with Silent() as silent:
        for workers, proc in servers(silent.addr, env):
            with proc as srv:
                socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
                for i, s in enumerate(socks):
                    s.sendto(dns.message.make_query(f"n{i}.bench.test", "A").to_wire(), ("127.0.0.1", srv.port))
                deadline, at_once = time.monotonic() + 2.0, 0
                while (left := deadline - time.monotonic()) > 0:
                    ready = select.select(socks, [], [], left)[0]
                    for s in ready:
                        assert s.recv(512)[3] & 0x0F == SERVFAIL
                        socks.remove(s)
                        s.close()
                        at_once += 1
                assert 60 - (int(workers) - 1) <= at_once <= 60, (workers, at_once)
                for s in socks:
                    s.close()
