"""TCP connections cannot be hoarded: idle and slow-loris connections make way, UDP is unaffected.

Real parts: `heimdall serve` on loopback, the session's NSD upstream (or a silent one), real TCP
connections from several loopback source addresses, dnspython clients, /metrics.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time

import dns.message
import dns.query
import dns.rcode
import psutil
import pytest

from closed_loop import ClosedLoop
from heimdall_server import HeimdallProcess
from test_http_e2e import free_tcp_port, scrape, total
from test_flood import CountingSilent


def connect(srv: HeimdallProcess, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((srv.address, srv.port), timeout=5, source_address=(source, 0))
    return s


def closed_by_server(s: socket.socket, wait: float = 0.0) -> bool:
    """The server closed `s` (EOF or reset), seen within `wait` seconds."""
    if not select.select([s], [], [], wait)[0]:
        return False
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def ask_on(sock: socket.socket, name: str) -> int:
    """One query on an open connection, which stays open; the answer's rcode."""
    wire = dns.message.make_query(name, "A").to_wire()
    sock.sendall(len(wire).to_bytes(2, "big") + wire)
    return dns.query.receive_tcp(sock, time.time() + 5)[0].rcode()


def ask_tcp(srv: HeimdallProcess, name: str, source: str = "127.0.0.1") -> int:
    q = dns.message.make_query(name, "A")
    return dns.query.tcp(q, srv.address, port=srv.port, timeout=5, source=source).rcode()


def until(check, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_at_the_limit_the_oldest_idle_connection_makes_way(upstream):
    hp = free_tcp_port()
    env = {"HEIMDALL_TCP_MAX_CONNECTIONS": "20", "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        idle = []
        for _ in range(20):
            idle.append(connect(srv))
            time.sleep(0.01)  # an order of age the server can see
        newcomers = []
        for i in range(3):  # each new client (which stays connected) is answered; the oldest idle ones go
            newcomers.append(connect(srv))
            assert ask_on(newcomers[-1], "www.example.test") == dns.rcode.NOERROR
            until(lambda: closed_by_server(idle[i]))
        assert not any(closed_by_server(s) for s in idle[3:])
        until(lambda: total(scrape(hp), "heimdall_tcp_evicted_total") == 3)
        assert total(scrape(hp), "heimdall_tcp_rejected_total") == 0
        for s in idle + newcomers:
            s.close()
        assert srv.stop() == 0


def test_a_client_at_its_own_limit_closes_its_own_oldest_idle_connection(upstream):
    env = {"HEIMDALL_TCP_MAX_CONNECTIONS_PER_IP": "5"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        greedy = []
        for _ in range(5):
            greedy.append(connect(srv, "127.0.0.2"))
            time.sleep(0.01)
        other = [connect(srv, "127.0.0.3") for _ in range(3)]
        sixth = connect(srv, "127.0.0.2")
        assert ask_on(sixth, "www.example.test") == dns.rcode.NOERROR
        until(lambda: closed_by_server(greedy[0]))
        assert not any(closed_by_server(s) for s in greedy[1:] + other)  # only its own, the oldest
        for s in greedy + other + [sixth]:
            s.close()
        assert srv.stop() == 0


def test_no_idle_connection_to_close_means_the_new_one_is_refused():
    """Every connection has a query waiting on a silent upstream: nothing may be closed to make room."""
    hp = free_tcp_port()
    env = {"HEIMDALL_TCP_MAX_CONNECTIONS": "4", "HEIMDALL_UPSTREAM_TIMEOUT": "5",
           "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}
    with CountingSilent() as silent, HeimdallProcess([silent.addr], env=env) as srv:
        busy = []
        for i in range(4):
            s = connect(srv)
            wire = dns.message.make_query(f"wait{i}.bench.test", "A").to_wire()
            s.sendall(len(wire).to_bytes(2, "big") + wire)
            busy.append(s)
        until(lambda: silent.received >= 4)  # every connection's query is waiting upstream
        late = connect(srv)
        assert closed_by_server(late, wait=3)
        assert not any(closed_by_server(s) for s in busy)
        until(lambda: total(scrape(hp), "heimdall_tcp_rejected_total") == 1)
        for s in busy + [late]:
            s.close()


def test_a_slow_loris_connection_is_closed_like_an_idle_one(upstream):
    """Half a length prefix, then a byte every 0.2 s: bytes of a query that never ends keep nothing open."""
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_TCP_IDLE_TIMEOUT": "1"}) as srv:
        loris, started = connect(srv), time.monotonic()
        loris.sendall(b"\x00")
        wire = dns.message.make_query("www.example.test", "A").to_wire()
        trickle = bytes([len(wire)]) + wire
        closed = False
        for b in trickle:
            if closed_by_server(loris, wait=0.2):
                closed = True
                break
            loris.sendall(bytes([b]))
        lived = time.monotonic() - started
        assert closed and lived < len(trickle) * 0.2, lived  # closed before its query could end
        loris.close()
        assert srv.stop() == 0


HOLD_S = float(os.environ.get("HEIMDALL_TEST_HOLD_S", "3"))  # docs/reliability.md quotes a 30 s run


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 6000:
        pytest.skip(f"the hard open-files limit ({hard}) is below the 5,500 connections this test holds")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20_000)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_thousands_of_idle_and_slow_connections_keep_no_client_out(upstream, many_fds):
    """5,000 idle and 500 slow-loris connections are opened and held by one attacker for HOLD_S seconds
    while new TCP clients (a new connection per query) and UDP clients keep asking: none of them loses
    a query, and the server holds no more than its connection limit."""
    hp = free_tcp_port()
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}) as srv:
        rss0 = psutil.Process(srv.proc.pid).memory_info().rss
        hoard: list[socket.socket] = []
        names = ["www.example.test", "w1.bench.test", "w2.bench.test"]
        with ClosedLoop(srv.address, srv.port, lambda c, s: (names[s % 3], "any"), clients=4, gap=0.01) as udp:
            tcp_answers = 0
            for i in range(5500):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((srv.address, srv.port))
                hoard.append(s)
                if i >= 5000:
                    try:
                        s.send(b"\x00")  # slow loris: half a length prefix, never more
                    except OSError:
                        pass
                if i % 250 == 0:  # a new client now and then, each on its own connection
                    assert ask_tcp(srv, names[i % 3]) == dns.rcode.NOERROR
                    tcp_answers += 1
            held_until = time.monotonic() + HOLD_S
            while time.monotonic() < held_until:  # the hoard stays open; clients keep coming
                assert ask_tcp(srv, names[tcp_answers % 3]) == dns.rcode.NOERROR
                tcp_answers += 1
                time.sleep(0.1)
            server = psutil.Process(srv.proc.pid)
            rss, fds = server.memory_info().rss, server.num_fds()
        recs = udp.stop()
        assert recs and not [r for r in recs if r.lost], f"UDP: {sum(r.lost for r in recs)} of {len(recs)} lost"
        assert tcp_answers > 22  # every one answered (asserted one by one), during the hold too
        evicted = total(scrape(hp), "heimdall_tcp_evicted_total")
        print(f"{tcp_answers} new TCP clients answered; RSS {rss0 / 2**20:.1f} -> {rss / 2**20:.1f} MB, {fds} open files; {evicted:.0f} idle connections "
              f"closed to make room; {len(recs)} UDP queries answered")
        assert fds < 512 + 64  # HEIMDALL_TCP_MAX_CONNECTIONS, whatever the attacker holds
        assert evicted > 3000  # most of the hoard was let in, then made way
        assert rss - rss0 < 64 * 2**20
        for s in hoard:
            s.close()
        assert srv.stop() == 0
