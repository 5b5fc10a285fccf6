"""Rate limiting end to end: a real server, real datagrams from real loopback source addresses."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.rcode
import psutil

from heimdall_server import HeimdallProcess


def ask(sock: socket.socket, port: int, name: str, timeout: float = 1.0) -> int | None:
    """One query on an open socket; the rcode, or None when no reply came."""
    q = dns.message.make_query(name, "A")
    sock.settimeout(timeout)
    sock.sendto(q.to_wire(), ("127.0.0.1", port))
    try:
        while True:
            data = sock.recv(4096)
            r = dns.message.from_wire(data)
            if r.id == q.id:
                return r.rcode()
    except socket.timeout:
        return None


def client(source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    return s


LIMITED = {"HEIMDALL_ENABLE_RATE_LIMITING": "true", "HEIMDALL_QUERIES_PER_SECOND_PER_IP": "2",
           "HEIMDALL_BURST_SIZE_PER_IP": "10"}


def timed_ask(sock: socket.socket, port: int, name: str, log: list[tuple[float, float, int | None]]) -> int | None:
    """ask, recording (sent, answered, rcode) in log."""
    sent = time.monotonic()
    code = ask(sock, port, name)
    log.append((sent, time.monotonic(), code))
    return code


def assert_token_bucket(log: list[tuple[float, float, int | None]], burst: int, rate: float) -> None:
    """Every answer is what a bucket of `burst` tokens refilled at `rate` per second, continuously,
    must give at the moment the server decided, which lies between the query's send and its answer.
    The bounds come from the measured times, so a slow machine moves them, never the verdict."""
    first_sent, first_answered = log[0][0], log[0][1]
    admitted = 0
    for i, (sent, answered, code) in enumerate(log):
        if code == dns.rcode.NOERROR:
            admitted += 1
            assert admitted <= burst + rate * (answered - first_sent) + 1e-6, (i, admitted, log)
        else:
            assert code == dns.rcode.REFUSED, (i, code)
            assert admitted > burst + rate * (sent - first_answered) - 1, (i, admitted, log)


def test_burst_is_refused_then_served_after_refill(upstream):
    with HeimdallProcess([upstream.addr], env=LIMITED) as srv, client() as c, client("127.0.0.2") as other:
        log: list[tuple[float, float, int | None]] = []
        codes = [timed_ask(c, srv.port, "burst.bench.test", log) for _ in range(30)]
        assert codes[:10] == [dns.rcode.NOERROR] * 10, codes
        assert dns.rcode.REFUSED in codes[10:], codes
        assert ask(other, srv.port, "burst.bench.test") == dns.rcode.NOERROR  # its own bucket
        time.sleep(1.05)  # 2 q/s: two tokens back at least, refilled continuously (no timer tick)
        after = [timed_ask(c, srv.port, "burst.bench.test", log) for _ in range(5)]
        assert after[:2] == [dns.rcode.NOERROR] * 2 and dns.rcode.REFUSED in after, after
        time.sleep(0.55)  # one token at least: a once-a-second tick would have given none yet
        assert timed_ask(c, srv.port, "burst.bench.test", log) == dns.rcode.NOERROR
        for _ in range(10):
            if timed_ask(c, srv.port, "burst.bench.test", log) == dns.rcode.REFUSED:
                break
        assert log[-1][2] == dns.rcode.REFUSED
        assert_token_bucket(log, burst=10, rate=2.0)


def test_drop_action_sends_nothing(upstream):
    env = dict(LIMITED, HEIMDALL_RATE_LIMIT_ACTION="drop", HEIMDALL_BURST_SIZE_PER_IP="3",
               HEIMDALL_QUERIES_PER_SECOND_PER_IP="0.1")
    with HeimdallProcess([upstream.addr], env=env) as srv, client() as c:
        codes = [ask(c, srv.port, "drop.bench.test", timeout=2) for _ in range(3)]  # the first a miss, upstream
        codes += [ask(c, srv.port, "drop.bench.test", timeout=0.5) for _ in range(3)]  # 0.15 tokens refill meanwhile
        assert codes[:3] == [dns.rcode.NOERROR] * 3 and codes[3:] == [None] * 3, codes


def test_aggregation_by_slash_24(upstream):
    env = dict(LIMITED, HEIMDALL_RATE_LIMIT_AGGREGATE="true", HEIMDALL_BURST_SIZE_PER_IP="4")
    with HeimdallProcess([upstream.addr], env=env) as srv:
        with client("127.0.0.1") as a, client("127.0.0.2") as b, client("127.0.1.1") as c:
            assert [ask(a, srv.port, "agg.bench.test") for _ in range(2)] == [0, 0]
            assert [ask(b, srv.port, "agg.bench.test") for _ in range(3)] == [0, 0, dns.rcode.REFUSED]
            assert ask(c, srv.port, "agg.bench.test") == dns.rcode.NOERROR  # another /24


def test_global_limit(upstream):
    env = {"HEIMDALL_ENABLE_RATE_LIMITING": "true", "HEIMDALL_GLOBAL_QUERIES_PER_SECOND": "5"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        codes = []
        for i in range(15):
            with client(f"127.0.2.{i + 1}") as c:
                codes.append(ask(c, srv.port, "global.bench.test"))
        assert codes.count(dns.rcode.NOERROR) in (5, 6) and codes[:5] == [0] * 5, codes


def test_ten_thousand_sources_keep_memory_bounded(upstream):
    env = dict(LIMITED, HEIMDALL_QUERIES_PER_SECOND_PER_IP="1000", HEIMDALL_BURST_SIZE_PER_IP="1000")
    with HeimdallProcess([upstream.addr], env=env) as srv:
        proc = psutil.Process(srv.pid)
        with client() as c:
            assert ask(c, srv.port, "many.bench.test") == 0
        before = proc.memory_info().rss
        q = dns.message.make_query("many.bench.test", "A").to_wire()
        answered = 0
        for batch in range(40):  # 40 x 250 = 10,000 distinct 127.x.y.z sources
            socks = []
            for i in range(250):
                n = batch * 250 + i
                s = client(f"127.10.{n // 250}.{n % 250 + 1}")
                s.sendto(q, ("127.0.0.1", srv.port))
                socks.append(s)
            for s in socks:
                s.settimeout(2)
                try:
                    s.recv(512)
                    answered += 1
                except socket.timeout:
                    pass
                s.close()
        grown = proc.memory_info().rss - before
        assert answered >= 9_900, answered
        assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MB for 10,000 clients"
        assert srv.proc.poll() is None


def test_tcp_queries_share_the_clients_bucket(upstream):
    env = dict(LIMITED, HEIMDALL_BURST_SIZE_PER_IP="4", HEIMDALL_QUERIES_PER_SECOND_PER_IP="0.01")
    with HeimdallProcess([upstream.addr], env=env) as srv, client() as c:
        assert ask(c, srv.port, "tcp.bench.test") == dns.rcode.NOERROR  # one token over UDP
        codes = [srv.query("tcp.bench.test", tcp=True).rcode() for _ in range(5)]
        assert codes == [0, 0, 0, dns.rcode.REFUSED, dns.rcode.REFUSED], codes
        assert ask(c, srv.port, "tcp.bench.test") == dns.rcode.REFUSED

