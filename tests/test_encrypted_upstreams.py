"""Upstreams over TCP, TLS and HTTPS against a real Unbound with a certificate from the test's CA.

Heimdall forwards to Unbound's plain port over tcp://, to its DoT port over
tls:// and to its DoH endpoint over https://, verifying the certificate
against HEIMDALL_UPSTREAM_CA_FILE. The connections are reused (a burst of
misses opens a few, not one each), a wrong name or an unknown CA is refused
with SERVFAIL and a log line, and a DoT upstream killed mid-run loses no
query that the second upstream can answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest

from heimdall import streamupstream
from heimdall.parsers import HostPort
from heimdall.streamupstream import MAX_CONNECTIONS
from heimdall.upstream import UpstreamPool
from heimdall.upstreamurl import UpstreamUrl, parse_upstream, parse_upstream_list, transport
from tests.heimdall_server import HeimdallProcess
from tools.peers import UnboundServer

NAME = "dns.heimdall.test"


def heimdall(urls: list[str], ca: Path, **env: str) -> HeimdallProcess:
    # bursts of misses under one zone: no per-zone bound on them
    return HeimdallProcess(urls, env={"HEIMDALL_UPSTREAM_CA_FILE": str(ca), "HEIMDALL_MAX_INFLIGHT_PER_ZONE": "0", **env})


def burst(port: int, names: list[str], timeout: float = 8.0) -> dict[str, int]:
    """Send every query at once over UDP, then collect: name -> rcode for each answered one."""
    pending: dict[int, str] = {}
    got: dict[str, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A")
            q.id = i
            pending[i] = name
            s.sendto(q.to_wire(), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = dns.message.from_wire(s.recv(65535))
            except socket.timeout:
                break
            name = pending.pop(reply.id, None)
            if name is not None:
                got[name] = reply.rcode()
    return got


def established(port: int) -> int:
    """TCP connections established to `port` on loopback (ss counts both ends; we count the clients')."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    return len([line for line in out.splitlines() if line.strip()])


def answer_of(srv: HeimdallProcess, name: str = "www.example.test") -> tuple[int, list[str]]:
    r = srv.query(name, timeout=5)
    return r.rcode(), [rr.to_text() for rrset in r.answer for rr in rrset]


# --- parsing ---------------------------------------------------------------------------------

def test_upstream_urls_parse_and_print_back():
    assert parse_upstream("10.0.0.1") == HostPort("10.0.0.1", 53)
    assert transport(parse_upstream("10.0.0.1:5353")) == "udp"
    assert parse_upstream("tcp://10.0.0.1") == UpstreamUrl("10.0.0.1", 53, "tcp")
    tls = parse_upstream("tls://[::1]:853#Dns.Example.")
    assert tls == UpstreamUrl("::1", 853, "tls", "dns.example") and str(tls) == "tls://[::1]:853#dns.example"
    assert parse_upstream("tls://1.1.1.1").port == 853
    doh = parse_upstream("https://9.9.9.9#dns.quad9.net")
    assert doh == UpstreamUrl("9.9.9.9", 443, "https", "dns.quad9.net", "/dns-query")
    assert str(doh) == "https://9.9.9.9:443/dns-query#dns.quad9.net"
    assert str(parse_upstream("https://127.0.0.1:8443/q")) == "https://127.0.0.1:8443/q"
    assert parse_upstream("quic://[::1]#Dns.Example") == UpstreamUrl("::1", 853, "quic", "dns.example")
    for text in ("tcp://10.0.0.1:53", "tls://[::1]:853#dns.example", "https://9.9.9.9:443/dns-query#a.b",
                 "quic://10.0.0.1:8853#dns.example"):
        assert str(parse_upstream(text)) == text
    assert parse_upstream_list("1.2.3.4, tls://1.2.3.4") == (HostPort("1.2.3.4", 53), UpstreamUrl("1.2.3.4", 853, "tls"))


@pytest.mark.parametrize("text, words", [
    ("udp://1.2.3.4", "unknown upstream scheme 'udp'"),
    ("doq://1.2.3.4", "unknown upstream scheme 'doq'"),
    ("quic://1.2.3.4/dns-query", "only https://"),
    ("tls://dns.google:853", "host must be an IP address"),
    ("tcp://1.2.3.4#name", "needs tls://, https:// or quic://"),
    ("tls://1.2.3.4/dns-query", "only https://"),
    ("tls://", "has no host"),
    ("https://1.2.3.4:70000/dns-query", "invalid port"),
    ("tls://1.2.3.4#bad name", "is not a server name"),
])
def test_bad_upstream_urls_are_clear_errors(text, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        parse_upstream(text)


def test_settings_take_urls_for_upstreams_and_forward_zones(pki):
    from heimdall.config import ConfigError, load_config

    server, _other = pki
    c = load_config([], {"HEIMDALL_UPSTREAM_SERVERS": "tls://127.0.0.1:853#dns.example,10.0.0.1",
                         "HEIMDALL_FORWARD_ZONES": "corp.example=https://10.0.0.53/dns-query|tcp://10.0.0.54",
                         "HEIMDALL_UPSTREAM_CA_FILE": str(server.ca)})
    assert [str(a) for a in c.upstream_servers] == ["tls://127.0.0.1:853#dns.example", "10.0.0.1:53"]
    assert str(c.forward_zones[0]) == "corp.example=https://10.0.0.53:443/dns-query|tcp://10.0.0.54:53"
    with pytest.raises(ConfigError, match="HEIMDALL_UPSTREAM_CA_FILE.*not a readable PEM"):
        load_config([], {"HEIMDALL_UPSTREAM_CA_FILE": str(server.key.parent / "missing.pem")})


# --- real upstreams --------------------------------------------------------------------------

def test_tcp_upstream_answers(tls_unbound, pki):
    with heimdall([f"tcp://127.0.0.1:{tls_unbound.port}"], pki[0].ca) as srv:
        assert answer_of(srv) == (dns.rcode.NOERROR, ["192.0.2.10"])


def test_dot_answers_and_reuses_few_connections(tls_unbound, pki):
    with heimdall([f"tls://127.0.0.1:{tls_unbound.tls_port}#{NAME}"], pki[0].ca) as srv:
        assert answer_of(srv) == (dns.rcode.NOERROR, ["192.0.2.10"])
        names = [f"dot-{i}.bench.test" for i in range(200)]
        got = burst(srv.port, names)
        conns = established(tls_unbound.tls_port)
        assert len(got) == 200 and set(got.values()) == {dns.rcode.NOERROR}
        assert 1 <= conns <= MAX_CONNECTIONS, f"{conns} connections for 200 misses"


def test_doh_answers_and_multiplexes(tls_unbound, pki):
    with heimdall([f"https://127.0.0.1:{tls_unbound.https_port}/dns-query#{NAME}"], pki[0].ca) as srv:
        assert answer_of(srv) == (dns.rcode.NOERROR, ["192.0.2.10"])
        got = burst(srv.port, [f"doh-{i}.bench.test" for i in range(200)])
        conns = established(tls_unbound.https_port)
        assert len(got) == 200 and set(got.values()) == {dns.rcode.NOERROR}
        assert 1 <= conns <= MAX_CONNECTIONS, f"{conns} connections for 200 misses"


def test_doh_without_name_verifies_the_ip_address(tls_unbound, pki):
    """The test certificate also carries 127.0.0.1, so no #name is needed to reach it by address."""
    with heimdall([f"https://127.0.0.1:{tls_unbound.https_port}/dns-query"], pki[0].ca) as srv:
        assert answer_of(srv) == (dns.rcode.NOERROR, ["192.0.2.10"])


def test_doh_error_status_is_an_upstream_failure(tls_unbound, pki):
    """Unbound answers 404 for a path it does not serve: SERVFAIL, never an empty NOERROR."""
    with heimdall([f"https://127.0.0.1:{tls_unbound.https_port}/no-such-path#{NAME}"], pki[0].ca) as srv:
        r = srv.query("www.example.test", timeout=5)
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer


def test_idle_connection_closes_and_the_next_query_reconnects(tls_unbound, pki, monkeypatch):
    """In-process pool against the real Unbound, with a short idle timeout so the test stays short."""
    monkeypatch.setattr(streamupstream, "IDLE_TIMEOUT", 0.3)
    question = dns.message.make_query("www.example.test", "A").to_wire()[12:]
    pool = UpstreamPool.from_config((parse_upstream(f"tls://127.0.0.1:{tls_unbound.tls_port}#{NAME}"),), 3.0,
                                    ca_file=str(pki[0].ca))

    async def run() -> list[int]:
        seen = []
        for _ in range(2):
            reply = await pool.query(question, True, False, False)
            assert reply is not None and reply[3] & 0xF == 0
            seen.append(established(tls_unbound.tls_port))
            await asyncio.sleep(0.8)
            seen.append(established(tls_unbound.tls_port))
        await pool.query(question, True, False, False)
        seen.append(established(tls_unbound.tls_port))
        pool.close()
        await asyncio.sleep(0.2)
        seen.append(established(tls_unbound.tls_port))
        return seen

    assert asyncio.run(asyncio.wait_for(run(), 20)) == [1, 0, 1, 0, 1, 0]
    assert pool.stats.sent_tls == 3 and pool.stats.ok == 3


def test_the_queries_of_one_loop_turn_leave_in_one_write(tls_unbound, pki, monkeypatch):
    """Eight misses started together (as the misses of one read of client queries are) go to the DoT
    upstream in one write, and each gets its own answer."""
    writes: list[int] = []
    flush = streamupstream.LengthPrefixed.flush

    def counted(self: streamupstream.LengthPrefixed) -> None:
        writes.append(len(self.out))
        flush(self)

    monkeypatch.setattr(streamupstream.LengthPrefixed, "flush", counted)
    pool = UpstreamPool.from_config((parse_upstream(f"tls://127.0.0.1:{tls_unbound.tls_port}#{NAME}"),), 5.0,
                                    ca_file=str(pki[0].ca))

    def question(name: str) -> bytes:
        return dns.message.make_query(name, "A").to_wire()[12:]

    async def run() -> list[bytes | None]:
        await pool.query(question("www.example.test"), True, False, False)  # the connection is up
        writes.clear()
        replies = await asyncio.gather(*(pool.query(question(f"turn{i}.bench.test"), True, False, False)
                                         for i in range(8)))
        pool.close()
        return replies

    replies = asyncio.run(asyncio.wait_for(run(), 20))
    assert writes == [8]
    for i, reply in enumerate(replies):
        assert reply is not None
        assert dns.message.from_wire(reply).question[0].name.to_text() == f"turn{i}.bench.test."


@pytest.mark.parametrize("case", ["wrong name", "unknown CA"])
def test_bad_certificate_is_refused_with_servfail_and_one_log_line(tls_unbound, pki, case):
    server, other_ca = pki
    name, ca = ("wrong.example", server.ca) if case == "wrong name" else (NAME, other_ca)
    with heimdall([f"tls://127.0.0.1:{tls_unbound.tls_port}#{name}"], ca) as srv:
        rcodes = [srv.query(f"bad-cert-{i}.bench.test", timeout=5).rcode() for i in range(5)]
        r = srv.query("www.example.test", timeout=5)
        log = srv.log
    assert rcodes == [dns.rcode.SERVFAIL] * 5 and r.rcode() == dns.rcode.SERVFAIL and not r.answer
    lines = [line for line in log.splitlines() if "certificate verification failed" in line]
    assert lines, log
    assert ("wrong.example" if case == "wrong name" else "unable to get local issuer certificate") in lines[0]
    assert len(lines) < 6, "a line per connection attempt (with backoff), not per query"


def queries_across(srv: HeimdallProcess, tag: str, event, clients: int = 4, each: int = 60) -> list[int | str]:
    """Each of `clients` threads asks `srv` `each` new names one after another; `event()` runs once a
    quarter of them are answered. Every query's rcode, or the exception's name for one never answered."""
    rcodes: list[int | str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(each):
            try:
                rc: int | str = srv.query(f"{tag}-{k}-{i}.bench.test", timeout=5).rcode()
            except Exception as exc:  # a lost query: no answer at all
                rc = type(exc).__name__
            with lock:
                rcodes.append(rc)
            time.sleep(0.005)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    while len(rcodes) < each and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    event()
    for t in threads:
        t.join(60)
    return rcodes


def test_killed_dot_upstream_loses_no_query(upstream, tls_unbound, pki):
    server, _other = pki
    first = UnboundServer(f"127.0.0.1:{upstream.port}", tls=(str(server.cert), str(server.key))).start()
    try:
        urls = [f"tls://127.0.0.1:{first.tls_port}#{NAME}", f"tls://127.0.0.1:{tls_unbound.tls_port}#{NAME}"]
        with heimdall(urls, server.ca, HEIMDALL_UPSTREAM_TIMEOUT="3") as srv:
            used_first = 0

            def kill() -> None:
                nonlocal used_first
                assert first.proc is not None
                used_first = established(first.tls_port)
                os.killpg(first.proc.pid, signal.SIGKILL)

            rcodes = queries_across(srv, "kill", kill)
            after = answer_of(srv)
    finally:
        first.stop()
    assert len(rcodes) == 240
    assert rcodes == [dns.rcode.NOERROR] * 240, {str(r) for r in rcodes}
    assert after == (dns.rcode.NOERROR, ["192.0.2.10"])
    assert used_first >= 1, "the queries before the kill went to the first upstream"


def test_silent_dot_upstream_is_failed_over_and_its_connection_renewed(upstream, tls_unbound, pki):
    """A stopped Unbound keeps its connection open but answers nothing: the query fails over, the
    silent connection is dropped, and once the upstream is back a fresh connection serves it."""
    server, _other = pki
    first = UnboundServer(f"127.0.0.1:{upstream.port}", tls=(str(server.cert), str(server.key))).start()
    try:
        urls = [f"tls://127.0.0.1:{first.tls_port}#{NAME}", f"tls://127.0.0.1:{tls_unbound.tls_port}#{NAME}"]
        with heimdall(urls, server.ca, HEIMDALL_UPSTREAM_TIMEOUT="2") as srv:
            assert answer_of(srv) == (dns.rcode.NOERROR, ["192.0.2.10"])
            assert established(first.tls_port) == 1
            assert first.proc is not None
            os.killpg(first.proc.pid, signal.SIGSTOP)
            try:
                stopped = answer_of(srv, "silent-1.bench.test")
                closed = established(first.tls_port)
            finally:
                os.killpg(first.proc.pid, signal.SIGCONT)
            time.sleep(0.7)  # the first upstream's health backoff (0.5 s) is over
            back = [answer_of(srv, f"back-{i}.bench.test")[0] for i in range(3)]
            reopened = established(first.tls_port)
    finally:
        first.stop()
    assert stopped[0] == dns.rcode.NOERROR and closed == 0
    assert back == [dns.rcode.NOERROR] * 3 and reopened == 1
