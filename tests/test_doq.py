"""Heimdall's DNS over QUIC listener against dnspython's DoQ client and raw aioquic clients.

The listener ("back") forwards to the session's NSD over UDP. The
knot-dnsutils kdig here is built without QUIC, so dnspython (`dns.query.quic`)
is the independent client; raw aioquic clients send what dnspython would not
(bad streams, resets, more than the server allows). tests/test_doq_upstream.py
forwards to this listener over quic://.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode
from test_encrypted_listeners import wait_log
from test_http_e2e import free_tcp_port, scrape, total

from heimdall import doqwire
from heimdall.doq import MAX_BUFFERED, MAX_STREAMS
from tests.heimdall_server import HeimdallProcess, free_port
from tools.testpki import SERVER_NAME, make_ca, make_pki, make_server_cert

IDLE = 3.0  # HEIMDALL_TCP_IDLE_TIMEOUT of the back
MAX_CONNECTIONS_BACK = 4


class Back:
    def __init__(self, srv: HeimdallProcess, port: int, http: int, ca: Path, other_ca: Path, host: str):
        self.srv, self.port, self.http, self.ca, self.other_ca, self.host = srv, port, http, ca, other_ca, host

    @property
    def url(self) -> str:
        return f"quic://{self.host}:{self.port}#{SERVER_NAME}"


def start_back(upstream_addr: str, pki, idle: float = IDLE, host: str = "127.0.0.1", **env: str) -> Back:
    server, other_ca = pki
    port, http = free_port(), free_tcp_port()
    bind = f"[{host}]" if ":" in host else host
    env = {"HEIMDALL_QUIC_BIND_ADDR": f"{bind}:{port}", "HEIMDALL_TLS_CERT_FILE": str(server.cert),
           "HEIMDALL_TLS_KEY_FILE": str(server.key), "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{http}",
           "HEIMDALL_TCP_IDLE_TIMEOUT": str(idle), "HEIMDALL_TCP_MAX_CONNECTIONS": str(MAX_CONNECTIONS_BACK),
           "HEIMDALL_MAX_INFLIGHT_PER_ZONE": "0", **env}
    return Back(HeimdallProcess([upstream_addr], env=env).start(), port, http, server.ca, other_ca, bind)


@pytest.fixture(scope="module")
def back(upstream, pki):
    b = start_back(upstream.addr, pki)
    yield b
    b.srv.stop()


def doq_query(back: Back, name: str = "www.example.test", ca: Path | None = None) -> dns.message.Message:
    return dns.query.quic(dns.message.make_query(name, "A"), "127.0.0.1", port=back.port, timeout=5,
                          verify=str(ca or back.ca), server_hostname=SERVER_NAME)


def refused(ask) -> None:
    """`ask()` fails at once: the handshake was refused (dnspython sees the connection end), no timeout."""
    t0 = time.monotonic()
    with pytest.raises(Exception) as exc:
        ask()
    assert not isinstance(exc.value, (AssertionError, dns.exception.Timeout)), exc.value
    assert time.monotonic() - t0 < 4


# --- the listener --------------------------------------------------------------------------------

def test_dnspython_over_quic_gets_its_answer_with_id_0(back):
    r = doq_query(back)
    assert r.id == 0 and r.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["192.0.2.10"]


def test_a_client_trusting_another_ca_fails_the_handshake(back):
    refused(lambda: doq_query(back, ca=back.other_ca))
    assert doq_query(back).rcode() == dns.rcode.NOERROR  # and the listener goes on


class Watched(QuicConnectionProtocol):
    """A raw DoQ client that records how the server ended the connection and what came on each stream."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ended: asyncio.Future[events.ConnectionTerminated] = asyncio.get_running_loop().create_future()
        self.streams: dict[int, bytes] = {}
        self.finished: set[int] = set()  # streams the server ended (FIN)
        self.resets: dict[int, int] = {}  # streams the server reset: their error code
        self.closed_by_server = False

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated) and not self.ended.done():
            self.ended.set_result(event)
        elif isinstance(event, events.StreamDataReceived):
            self.streams[event.stream_id] = self.streams.get(event.stream_id, b"") + event.data
            if event.end_stream:
                self.finished.add(event.stream_id)
        elif isinstance(event, events.StreamReset):
            self.resets[event.stream_id] = event.error_code

    def send(self, payload: bytes, end: bool = True, now: bool = True) -> int:
        """A new stream with `payload`; sent at once unless `now` is False (then with what follows)."""
        sid = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(sid, payload, end_stream=end)
        if now:
            self.transmit()
        return sid

    async def settle(self, wait: float, until=lambda: False) -> None:
        """Until the server closes the connection, `until()` holds, or `wait` seconds pass."""
        deadline = time.monotonic() + wait
        while not self.ended.done() and not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.closed_by_server = self.ended.done()  # read before ours, on leaving the connection


def client_config(ca: Path) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[doqwire.ALPN], server_name=SERVER_NAME)
    config.load_verify_locations(str(ca))
    return config


def raw(back: Back, script, host: str = "127.0.0.1", handshake: bool = True) -> Watched:
    """Run `await script(client)` on a new raw connection to the back (once its handshake is done,
    if `handshake`); the client afterwards."""
    async def run() -> Watched:
        async with connect(host, back.port, configuration=client_config(back.ca), create_protocol=Watched,
                           wait_connected=handshake) as client:
            await script(client)
            return client
    return asyncio.run(run())


def send_raw(back: Back, payloads: list[bytes], wait: float = 5.0, end: bool = True) -> Watched:
    """Each payload on a stream of its own (FIN after it, if `end`), until the server closes the
    connection or `wait` seconds pass."""
    async def script(client: Watched) -> None:
        for payload in payloads:
            client.send(payload, end)
        await client.settle(wait)
    return raw(back, script)


def query_bytes(qid: int, name: str = "www.example.test") -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    wire = q.to_wire()
    return len(wire).to_bytes(2, "big") + wire


@pytest.mark.parametrize("case", ["non-zero id", "two messages", "no length", "short length"])
def test_a_stream_that_is_not_one_query_with_id_0_is_a_protocol_error(back, case):
    payload = {"non-zero id": query_bytes(1234), "two messages": query_bytes(0) * 2,
               "no length": query_bytes(0)[2:], "short length": query_bytes(0)[:-3]}[case]
    client = send_raw(back, [payload])
    assert client.closed_by_server
    assert client.ended.result().error_code == doqwire.PROTOCOL_ERROR
    assert doq_query(back).rcode() == dns.rcode.NOERROR


def test_unfinished_queries_past_the_bound_close_the_connection(back):
    unfinished = (65535).to_bytes(2, "big") + bytes(60_000)  # a message's length, not its bytes
    assert 4 * len(unfinished) < MAX_BUFFERED < 5 * len(unfinished)
    four = send_raw(back, [unfinished] * 4, wait=1, end=False)
    assert not four.closed_by_server
    five = send_raw(back, [unfinished] * 5, wait=5, end=False)
    assert five.closed_by_server and five.ended.result().error_code == doqwire.EXCESSIVE_LOAD
    assert doq_query(back).rcode() == dns.rcode.NOERROR


def test_no_stream_may_carry_more_than_one_message(back):
    async def script(client: Watched) -> None:
        client._quic._remote_max_stream_data_bidi_remote = 1 << 20  # as if the server allowed it
        client.send(bytes(70_000), end=False)
        await client.settle(5)
    client = raw(back, script)
    assert client.closed_by_server
    assert client.ended.result().error_code == QuicErrorCode.FLOW_CONTROL_ERROR  # aioquic's own check


def test_at_most_max_streams_queries_are_open_on_a_connection(back):
    async def script(client: Watched) -> None:
        client._quic._remote_max_streams_bidi = 4 * MAX_STREAMS  # as if the server allowed them
        for _ in range(MAX_STREAMS):
            client.send(b"\0\x20", end=False)  # a length, and the message still to come
        await client.settle(0.5)
        assert not client.closed_by_server
        client.send(b"\0\x20", end=False)
        await client.settle(5)
    client = raw(back, script)
    assert client.closed_by_server and client.ended.result().error_code == QuicErrorCode.STREAM_LIMIT_ERROR


def test_streams_the_client_resets_are_freed_for_new_queries(back):
    names = [f"after-reset-{i}.bench.test" for i in range(MAX_STREAMS)]

    async def script(client: Watched) -> None:
        for _ in range(MAX_STREAMS):
            client._quic.reset_stream(client.send(b"\0\x20", end=False), doqwire.REQUEST_CANCELLED)
        client.transmit()
        for name in names:  # needs the streams the server freed: all of them were in use
            client.send(query_bytes(0, name))
        await client.settle(5, until=lambda: len(client.finished) == len(names))
    client = raw(back, script)
    assert not client.closed_by_server and len(client.finished) == len(names)


@pytest.mark.parametrize("kind", ["hit", "miss"])
def test_a_stream_the_client_stops_gets_no_reply_and_no_error(back, kind):
    name = "www.example.test" if kind == "hit" else "stopped.bench.test"
    doq_query(back, name if kind == "hit" else "www.example.test")  # a hit is in the cache

    async def script(client: Watched) -> None:
        sid = client.send(query_bytes(0, name), now=False)
        client._quic.stop_stream(sid, doqwire.REQUEST_CANCELLED)  # in the same packet as the query
        client.transmit()
        await client.settle(2, until=lambda: sid in client.resets or sid in client.finished)
    client = raw(back, script)
    assert not client.closed_by_server and list(client.resets) == [0] and not client.finished
    assert doq_query(back).rcode() == dns.rcode.NOERROR
    assert "internal error" not in back.srv.log and "Traceback" not in back.srv.log, back.srv.log


def test_a_query_the_rate_limit_drops_has_its_stream_reset(upstream, pki):
    b = start_back(upstream.addr, pki, HEIMDALL_ENABLE_RATE_LIMITING="true", HEIMDALL_BURST_SIZE_PER_IP="1",
                   HEIMDALL_QUERIES_PER_SECOND_PER_IP="0.001", HEIMDALL_RATE_LIMIT_ACTION="drop")
    try:
        async def script(client: Watched) -> None:
            client.send(query_bytes(0))
            client.send(query_bytes(0))
            await client.settle(5, until=lambda: len(client.finished) + len(client.resets) == 2)
        client = raw(b, script)
    finally:
        b.srv.stop()
    assert client.finished == {0} and client.resets == {4: doqwire.EXCESSIVE_LOAD}


def test_a_message_the_server_drops_has_its_stream_reset(back):
    response = bytearray(query_bytes(0))
    response[2 + 2] |= 0x80  # QR: a response, which a server never answers

    async def script(client: Watched) -> None:
        client.send(bytes(response))
        await client.settle(5, until=lambda: 0 in client.resets)
    client = raw(back, script)
    assert not client.closed_by_server and client.resets == {0: doqwire.INTERNAL_ERROR}


def test_streams_are_answered_each_on_its_own_stream(back):
    names = [f"stream-{i}.bench.test" for i in range(20)]
    queries = [query_bytes(0, n) for n in names]

    async def script(client: Watched) -> None:
        for q in queries:
            client.send(q)
        await client.settle(5, until=lambda: len(client.finished) == 20)
    client = raw(back, script)
    assert len(client.streams) == 20 and client.finished == set(client.streams)  # each ended by the server
    for sid, data in client.streams.items():
        msg = dns.message.from_wire(doqwire.message(data))
        assert msg.id == 0 and msg.rcode() == dns.rcode.NOERROR
        assert msg.question[0].name.to_text() == names[sid // 4] + "."


def test_an_idle_connection_is_closed(back):
    t0 = time.monotonic()
    client = send_raw(back, [query_bytes(0)], wait=IDLE * 4)
    assert client.closed_by_server and len(client.streams) == 1
    assert client.ended.result().reason_phrase == "idle"  # our idle check's, not QUIC's silent timeout
    assert time.monotonic() - t0 >= IDLE * 0.8


async def closed_by_server(back: Back, n: int) -> list[bool]:
    """Open `n` idle connections one after another, then wait for the server to close the first:
    which of them it closed."""
    held = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            held.append(await stack.enter_async_context(
                connect("127.0.0.1", back.port, configuration=client_config(back.ca), create_protocol=Watched)))
        await held[0].settle(5)  # the server closes one when its handshake with the last is done
        await asyncio.sleep(0.2)
        return [c.ended.done() for c in held]


def test_at_the_connection_limit_the_oldest_idle_connection_makes_way(upstream, pki):
    b = start_back(upstream.addr, pki, idle=60)  # no connection here goes idle during the test
    try:
        closed = asyncio.run(closed_by_server(b, MAX_CONNECTIONS_BACK + 1))
        evicted = total(scrape(b.http), "heimdall_tcp_evicted_total")
    finally:
        b.srv.stop()
    assert evicted == 1
    assert closed == [True] + [False] * MAX_CONNECTIONS_BACK


def half_open(back: Back, n: int) -> list[socket.socket]:
    """`n` connections that send their first flight and nothing more: handshakes never done."""
    socks = []
    for _ in range(n):
        quic = QuicConnection(configuration=client_config(back.ca))
        quic.connect(("127.0.0.1", back.port), now=time.monotonic())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", back.port))
        for data, _addr in quic.datagrams_to_send(now=time.monotonic()):
            sock.send(data)
        socks.append(sock)
    return socks


def test_handshakes_are_bounded_in_number_and_in_time(upstream, pki):
    idle = 2.0
    b = start_back(upstream.addr, pki, idle=idle)
    socks = half_open(b, MAX_CONNECTIONS_BACK)
    try:
        time.sleep(0.3)
        async def first_flight(client: Watched) -> None:
            client.transmit()
            await client.settle(5)
        turned_away = raw(b, first_flight, handshake=False)  # one handshake too many
        assert turned_away.closed_by_server and not turned_away.streams
        # refused in the server's first Initial, before any TLS work (after it, the close would be
        # DoQ's EXCESSIVE_LOAD carried as QUIC's APPLICATION_ERROR: RFC 9000 10.2.3)
        assert turned_away.ended.result().error_code == QuicErrorCode.CONNECTION_REFUSED
        assert total(scrape(b.http), "heimdall_tcp_rejected_total") == 1
        deadline = time.monotonic() + idle + 8
        while True:  # the stalled ones are dropped after the idle timeout: room again
            try:
                assert doq_query(b).rcode() == dns.rcode.NOERROR
                break
            except Exception:
                assert time.monotonic() < deadline, "the stalled handshakes kept their places"
                time.sleep(0.5)
    finally:
        for sock in socks:
            sock.close()
        b.srv.stop()


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
        refused(lambda: doq_query(b))  # the old CA no longer matches
    finally:
        b.srv.stop()


def test_metrics_name_the_transport(back):
    before = total(scrape(back.http), "heimdall_queries_total", protocol="doq")
    for i in range(3):
        doq_query(back, f"metrics-{i}.bench.test")
    assert total(scrape(back.http), "heimdall_queries_total", protocol="doq") - before == 3
