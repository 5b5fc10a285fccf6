"""DNS over QUIC both ways: Heimdall's DoQ listener against dnspython's DoQ client and raw aioquic
clients, and Heimdall forwarding over quic:// to that listener.

The listener ("back") forwards to the session's NSD over UDP; a second Heimdall
("front") forwards to the back over DoQ, verifying its certificate against the
test's CA. The knot-dnsutils kdig here is built without QUIC, so dnspython
(`dns.query.quic`) is the independent client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from test_encrypted_listeners import wait_log
from test_encrypted_upstreams import answer_of, burst, heimdall
from test_http_e2e import free_tcp_port, scrape, total

from heimdall import doqwire
from heimdall.config import ConfigError, load_config
from heimdall.doq import MAX_BUFFERED
from heimdall.streamupstream import MAX_CONNECTIONS
from tests.heimdall_server import HeimdallProcess, free_port
from tools.testpki import SERVER_NAME, make_ca, make_pki, make_server_cert

IDLE = 3.0  # HEIMDALL_TCP_IDLE_TIMEOUT of the back
MAX_CONNECTIONS_BACK = 4


class Back:
    def __init__(self, srv: HeimdallProcess, port: int, http: int, ca: Path, other_ca: Path):
        self.srv, self.port, self.http, self.ca, self.other_ca = srv, port, http, ca, other_ca

    @property
    def url(self) -> str:
        return f"quic://127.0.0.1:{self.port}#{SERVER_NAME}"


def start_back(upstream_addr: str, pki) -> Back:
    server, other_ca = pki
    port, http = free_port(), free_tcp_port()
    env = {"HEIMDALL_QUIC_BIND_ADDR": f"127.0.0.1:{port}", "HEIMDALL_TLS_CERT_FILE": str(server.cert),
           "HEIMDALL_TLS_KEY_FILE": str(server.key), "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{http}",
           "HEIMDALL_TCP_IDLE_TIMEOUT": str(IDLE), "HEIMDALL_TCP_MAX_CONNECTIONS": str(MAX_CONNECTIONS_BACK),
           "HEIMDALL_MAX_INFLIGHT_PER_ZONE": "0"}
    return Back(HeimdallProcess([upstream_addr], env=env).start(), port, http, server.ca, other_ca)


@pytest.fixture(scope="module")
def back(upstream, pki):
    b = start_back(upstream.addr, pki)
    yield b
    b.srv.stop()


def doq_query(back: Back, name: str = "www.example.test", ca: Path | None = None) -> dns.message.Message:
    return dns.query.quic(dns.message.make_query(name, "A"), "127.0.0.1", port=back.port, timeout=5,
                          verify=str(ca or back.ca), server_hostname=SERVER_NAME)


# --- the listener --------------------------------------------------------------------------------

def test_dnspython_over_quic_gets_its_answer_with_id_0(back):
    r = doq_query(back)
    assert r.id == 0 and r.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["192.0.2.10"]


def test_a_client_trusting_another_ca_fails_the_handshake(back):
    with pytest.raises(Exception) as exc:
        doq_query(back, ca=back.other_ca)
    assert not isinstance(exc.value, AssertionError)
    assert doq_query(back).rcode() == dns.rcode.NOERROR  # and the listener goes on


class Watched(QuicConnectionProtocol):
    """A raw DoQ client that records how the server ended the connection and what came on each stream."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ended: asyncio.Future[events.ConnectionTerminated] = asyncio.get_running_loop().create_future()
        self.streams: dict[int, bytes] = {}
        self.closed_by_server = False

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated) and not self.ended.done():
            self.ended.set_result(event)
        elif isinstance(event, events.StreamDataReceived):
            self.streams[event.stream_id] = self.streams.get(event.stream_id, b"") + event.data


def client_config(ca: Path) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[doqwire.ALPN], server_name=SERVER_NAME)
    config.load_verify_locations(str(ca))
    return config


async def send_raw(back: Back, payloads: list[bytes], wait: float = 5.0, end: bool = True) -> Watched:
    """Each payload on a stream of its own (FIN after it, if `end`); returns once the server closed the
    connection or `wait` seconds passed."""
    async with connect("127.0.0.1", back.port, configuration=client_config(back.ca),
                       create_protocol=Watched) as client:
        for payload in payloads:
            sid = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(sid, payload, end_stream=end)
        client.transmit()
        try:
            await asyncio.wait_for(asyncio.shield(client.ended), wait)
        except asyncio.TimeoutError:
            pass
        client.closed_by_server = client.ended.done()  # before ours, on leaving this block
        return client


def query_bytes(qid: int, name: str = "www.example.test") -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    wire = q.to_wire()
    return len(wire).to_bytes(2, "big") + wire


@pytest.mark.parametrize("case", ["non-zero id", "two messages", "no length", "short length"])
def test_a_stream_that_is_not_one_query_with_id_0_is_a_protocol_error(back, case):
    payload = {"non-zero id": query_bytes(1234), "two messages": query_bytes(0) * 2,
               "no length": query_bytes(0)[2:], "short length": query_bytes(0)[:-3]}[case]
    client = asyncio.run(send_raw(back, [payload]))
    assert client.closed_by_server
    assert client.ended.result().error_code == doqwire.PROTOCOL_ERROR
    assert doq_query(back).rcode() == dns.rcode.NOERROR


def test_unfinished_queries_past_the_bound_close_the_connection(back):
    unfinished = (65535).to_bytes(2, "big") + bytes(60_000)  # a message's length, not its bytes
    assert 4 * len(unfinished) < MAX_BUFFERED < 5 * len(unfinished)
    four = asyncio.run(send_raw(back, [unfinished] * 4, wait=1, end=False))
    assert not four.closed_by_server
    five = asyncio.run(send_raw(back, [unfinished] * 5, wait=5, end=False))
    assert five.closed_by_server and five.ended.result().error_code == doqwire.EXCESSIVE_LOAD
    assert doq_query(back).rcode() == dns.rcode.NOERROR


def test_streams_are_answered_each_on_its_own_stream(back):
    names = [f"stream-{i}.bench.test" for i in range(20)]
    client = asyncio.run(send_raw(back, [query_bytes(0, n) for n in names], wait=3))
    assert len(client.streams) == 20
    for sid, data in client.streams.items():
        msg = dns.message.from_wire(doqwire.message(data))
        assert msg.id == 0 and msg.rcode() == dns.rcode.NOERROR
        assert msg.question[0].name.to_text() == names[sid // 4] + "."


def test_an_idle_connection_is_closed(back):
    t0 = time.monotonic()
    client = asyncio.run(send_raw(back, [query_bytes(0)], wait=IDLE * 4))
    assert client.closed_by_server and len(client.streams) == 1
    assert client.ended.result().reason_phrase == "idle"  # our idle check's, not QUIC's silent timeout
    assert time.monotonic() - t0 >= IDLE * 0.8


async def closed_by_server(back: Back, n: int) -> list[bool]:
    """Open `n` idle connections one after another, then wait (less than the idle timeout) for the
    server to close the first: which of them it closed."""
    held = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            held.append(await stack.enter_async_context(
                connect("127.0.0.1", back.port, configuration=client_config(back.ca), create_protocol=Watched)))
        try:  # the server closes one when its handshake with the last is done, which follows ours
            await asyncio.wait_for(asyncio.shield(held[0].ended), IDLE / 2)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(0.1)
        return [c.ended.done() for c in held]


def test_at_the_connection_limit_the_oldest_idle_connection_makes_way(back):
    time.sleep(IDLE * 1.5)  # earlier tests' connections have gone idle and closed
    m0 = scrape(back.http)
    closed = asyncio.run(closed_by_server(back, MAX_CONNECTIONS_BACK + 1))
    m1 = scrape(back.http)
    assert total(m1, "heimdall_tcp_evicted_total") - total(m0, "heimdall_tcp_evicted_total") == 1
    assert closed == [True] + [False] * MAX_CONNECTIONS_BACK


def test_sighup_gives_new_connections_the_new_certificate(upstream, tmp_path):
    server, other_ca = make_pki(tmp_path)
    b = start_back(upstream.addr, (server, other_ca))
    try:
        assert doq_query(b).rcode() == dns.rcode.NOERROR
        good = server.cert.read_bytes()
        server.cert.write_text("broken\n")
        b.srv.signal(signal.SIGHUP)
        wait_log(b.srv, "keeping the certificate loaded before")
        assert doq_query(b).rcode() == dns.rcode.NOERROR
        server.cert.write_bytes(good)
        new = make_server_cert(tmp_path, make_ca(tmp_path, "new-ca"), stem="new-server")
        server.cert.write_bytes(new.cert.read_bytes())
        server.key.write_bytes(new.key.read_bytes())
        b.srv.signal(signal.SIGHUP)
        wait_log(b.srv, "TLS certificate reloaded")
        assert doq_query(b, ca=new.ca).rcode() == dns.rcode.NOERROR
        with pytest.raises(Exception) as exc:  # the old CA no longer matches
            doq_query(b)
        assert not isinstance(exc.value, AssertionError)
    finally:
        b.srv.stop()


def test_without_aioquic_doq_is_a_configuration_error_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aioquic" else real(name, *a))
    for args in (["--upstream-servers", f"quic://127.0.0.1#{SERVER_NAME}"],
                 ["--upstream-servers", "127.0.0.1", "--quic-bind-addr", "127.0.0.1:8853",
                  "--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"]):
        with pytest.raises(ConfigError, match=r"heimdall-dns\[quic\]"):
            load_config(args, {})
    assert load_config(["--upstream-servers", "tls://127.0.0.1#x"], {}).upstream_servers


def test_metrics_name_the_transport(back):
    before = total(scrape(back.http), "heimdall_queries_total", protocol="doq")
    for i in range(3):
        doq_query(back, f"metrics-{i}.bench.test")
    assert total(scrape(back.http), "heimdall_queries_total", protocol="doq") - before == 3


# --- the upstream --------------------------------------------------------------------------------

def test_heimdall_forwards_over_quic_on_few_connections(back):
    m0 = scrape(back.http)
    with heimdall([back.url], back.ca) as front:
        assert answer_of(front) == (dns.rcode.NOERROR, ["192.0.2.10"])
        got = burst(front.port, [f"doq-{i}.bench.test" for i in range(200)])
    m1 = scrape(back.http)
    assert len(got) == 200 and set(got.values()) == {dns.rcode.NOERROR}
    assert total(m1, "heimdall_queries_total", protocol="doq") - total(m0, "heimdall_queries_total", protocol="doq") == 201
    connections = total(m1, "heimdall_tcp_connections_total") - total(m0, "heimdall_tcp_connections_total")
    assert 1 <= connections <= MAX_CONNECTIONS, f"{connections} connections for 201 misses"


@pytest.mark.parametrize("case", ["wrong name", "unknown CA"])
def test_bad_certificate_is_refused_with_servfail_and_a_log_line(back, case):
    name, ca = ("wrong.example", back.ca) if case == "wrong name" else (SERVER_NAME, back.other_ca)
    with heimdall([f"quic://127.0.0.1:{back.port}#{name}"], ca) as front:
        rcodes = [front.query(f"bad-cert-{i}.bench.test", timeout=5).rcode() for i in range(4)]
        log = front.log
    assert rcodes == [dns.rcode.SERVFAIL] * 4
    lines = [line for line in log.splitlines() if "QUIC handshake failed" in line]
    assert lines, log
    assert ("wrong.example" if case == "wrong name" else "unable to get local issuer certificate") in lines[0]
    assert len(lines) < 5, "a line per connection attempt (with backoff), not per query"


def test_killed_doq_upstream_loses_no_query(upstream, pki):
    first = start_back(upstream.addr, pki)
    try:
        with heimdall([first.url, upstream.addr], first.ca, HEIMDALL_UPSTREAM_TIMEOUT="3") as front:
            rcodes: list[int | str] = []
            lock = threading.Lock()

            def client(k: int) -> None:
                for i in range(60):
                    try:
                        rc: int | str = front.query(f"kill-doq-{k}-{i}.bench.test", timeout=5).rcode()
                    except Exception as exc:  # a lost query: no answer at all
                        rc = type(exc).__name__
                    with lock:
                        rcodes.append(rc)
                    time.sleep(0.005)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            while len(rcodes) < 60 and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            used_first = total(scrape(first.http), "heimdall_queries_total", protocol="doq")
            os.killpg(first.srv.pid, signal.SIGKILL)
            for t in threads:
                t.join(60)
            after = answer_of(front, "www.example.test")
    finally:
        first.srv.stop()
    assert rcodes == [dns.rcode.NOERROR] * 240, {str(r) for r in rcodes}
    assert after == (dns.rcode.NOERROR, ["192.0.2.10"])
    assert used_first >= 1, "the queries before the kill went to the DoQ upstream"
