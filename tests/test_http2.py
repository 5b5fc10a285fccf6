"""heimdall/http2.py in process, driven by the h2 library as the client (an independent HTTP/2
implementation) and by raw bytes: replies, flow control, limits, and no crash on any input."""

from __future__ import annotations

import os
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall.headerblock import HeaderBlocks, encode_headers, neutral_fields, request_of
from heimdall.http2 import Http2Connection
from heimdall.http2frame import (DATA, FLOW_CONTROL_ERROR, FRAME_SIZE, GOAWAY, HEADERS, MAX_BLOCK, MAX_STREAMS, PREFACE,
                                 REFUSED_STREAM, RST_STREAM, SETTINGS, frame)

PROPS = settings(max_examples=int(os.environ.get("HEIMDALL_PROP_EXAMPLES", "300")), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
POST = [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", "/dns-query"),
        ("content-type", "application/dns-message")]


class Server:
    """An Http2Connection whose requests are kept, to be answered when the test says."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.requests: list[tuple[int, bytes, bytes, bytes | None, bytes]] = []
        self.closed = False
        self.conn = Http2Connection(lambda *req: self.requests.append(req), self.written.extend, self.close)
        self.conn.flush()

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data


def connect(**client_settings: int) -> tuple[Server, h2.connection.H2Connection]:
    server = Server()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    if client_settings:
        client.update_settings({getattr(h2.settings.SettingCodes, k): v for k, v in client_settings.items()})
    exchange(server, client)
    return server, client


def exchange(server: Server, client: h2.connection.H2Connection) -> list[h2.events.Event]:
    server.conn.receive(client.data_to_send())
    return client.receive_data(server.take())


def answers(events: list[h2.events.Event]) -> dict[int, bytes]:
    bodies: dict[int, bytes] = {}
    for e in events:
        if isinstance(e, h2.events.DataReceived):
            bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
    return bodies


def test_requests_answered_now_and_later_reach_the_client_whole():
    server, client = connect()
    for _ in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, POST)
        client.send_data(sid, b"q" * 30, end_stream=True)
    exchange(server, client)
    assert [(r[1], r[2], r[3], r[4]) for r in server.requests] == [(b"POST", b"/dns-query",
                                                                    b"application/dns-message", b"q" * 30)] * 3
    sids = [r[0] for r in server.requests]
    server.conn.respond(sids[1], 200, [(b"content-length", b"5")], b"two!!")  # answered out of order
    events = client.receive_data(server.take())
    server.conn.respond(sids[0], 404, [], b"one")
    server.conn.respond(sids[2], 200, [], b"")  # a HEAD-like reply: no body at all
    events += client.receive_data(server.take())
    heads = {e.stream_id: dict(e.headers) for e in events if isinstance(e, h2.events.ResponseReceived)}
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert heads[sids[1]][b":status"] == b"200" and heads[sids[0]][b":status"] == b"404"
    assert answers(events) == {sids[1]: b"two!!", sids[0]: b"one"} and ended == set(sids)
    assert not server.conn.streams


def test_after_the_clients_goaway_its_streams_are_answered_then_the_connection_closes():
    """Requests and GOAWAY in one read: the one answered at once and the one answered later
    both reach the client; the connection closes after the last."""
    server, client = connect()

    def answer_the_first_now(sid: int, *request: object) -> None:  # as a cache hit is, within the read
        server.requests.append((sid, *request))
        if len(server.requests) == 1:
            server.conn.respond(sid, 200, [], b"now")

    server.conn.on_request = answer_the_first_now
    for _ in range(2):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, POST)
        client.send_data(sid, b"q" * 12, end_stream=True)
    goaway = frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))  # h2 would stop reading after its own
    server.conn.receive(client.data_to_send() + goaway)
    first, second = (r[0] for r in server.requests)
    assert not server.closed
    server.conn.respond(second, 200, [], b"later")
    assert server.closed and server.conn.closed
    assert answers(client.receive_data(server.take())) == {first: b"now", second: b"later"}


def test_a_reply_waits_for_the_clients_window_and_goes_out_in_its_frame_size():
    server, client = connect(INITIAL_WINDOW_SIZE=10)
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, POST, end_stream=True)
    exchange(server, client)
    server.conn.respond(sid, 200, [], b"0123456789abcdefghij")
    got = answers(client.receive_data(server.take()))
    assert got == {sid: b"0123456789"}  # the window's worth, the rest waits
    client.increment_flow_control_window(100, stream_id=sid)
    events = exchange(server, client)
    assert answers(events) == {sid: b"abcdefghij"}
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_a_large_body_is_taken_with_window_updates_and_passed_on_whole():
    server, client = connect()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, POST)
    body = os.urandom(70000)
    sent = 0
    for _ in range(20):  # the client sends as the windows we give back allow
        room = min(client.local_flow_control_window(sid), client.max_outbound_frame_size, len(body) - sent)
        if room:
            client.send_data(sid, body[sent:sent + room], end_stream=sent + room == len(body))
            sent += room
        exchange(server, client)
        if sent == len(body):
            break
    assert sent == len(body) and len(server.requests) == 1
    assert len(server.requests[0][4]) > 65535  # over a DNS message: the listener answers 413


def headers_frame(sid: int, encoder: hpack.Encoder, end_stream: bool = True) -> bytes:
    block = encoder.encode([(":method", "GET"), (":scheme", "https"), (":path", "/dns-query?dns=AAAA")])
    return frame(HEADERS, 0x4 | (0x1 if end_stream else 0), sid, block)


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, i = [], 0
    while i + 9 <= len(data):
        size = int.from_bytes(data[i:i + 3], "big")
        out.append((data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big"), data[i + 9:i + 9 + size]))
        i += 9 + size
    return out


def opened(server: Server) -> None:
    server.conn.receive(PREFACE + frame(SETTINGS, 0, 0))
    server.take()


def test_streams_past_the_limit_are_refused_and_the_connection_goes_on():
    server, encoder = Server(), hpack.Encoder()
    opened(server)
    server.conn.receive(b"".join(headers_frame(2 * i + 1, encoder, end_stream=False) for i in range(MAX_STREAMS + 1)))
    resets = [(f[2], struct.unpack(">I", f[3])[0]) for f in frames_of(server.take()) if f[0] == RST_STREAM]
    assert resets == [(2 * MAX_STREAMS + 1, REFUSED_STREAM)] and not server.closed
    server.conn.receive(frame(DATA, 0x1, 1, b"x" * 12))  # stream 1 completes: its request arrives
    assert [r[0] for r in server.requests] == [1]


def test_data_past_the_connection_window_is_a_flow_control_error():
    server = Server()
    opened(server)
    server.conn.receive(frame(HEADERS, 0x4, 1, b"\x83\x87\x84") + frame(DATA, 0, 1, b"\0" * FRAME_SIZE) * 5)
    last = frames_of(server.take())[-1]
    assert server.closed and last[0] == GOAWAY and struct.unpack(">II", last[3]) == (1, FLOW_CONTROL_ERROR)


def test_an_oversized_header_block_closes_the_connection():
    server = Server()
    opened(server)
    server.conn.receive(frame(HEADERS, 0x1, 1, b"\x82"))  # END_STREAM but no END_HEADERS: CONTINUATIONs follow
    for _ in range(MAX_BLOCK // FRAME_SIZE + 2):
        server.conn.receive(frame(9, 0, 1, b"\x00" * FRAME_SIZE))  # CONTINUATION, never END_HEADERS
    assert server.closed and frames_of(server.take())[-1][0] == GOAWAY
    assert len(server.conn.block or b"") <= MAX_BLOCK + FRAME_SIZE


def test_our_reply_heads_decode_with_hpack_and_leave_its_table_alone():
    decoder = hpack.Decoder()
    block = encode_headers(415, [(b"content-type", b"text/plain"), (b"x-long", b"v" * 300)])
    assert decoder.decode(block, raw=True) == [(b":status", b"415"), (b"content-type", b"text/plain"),
                                               (b"x-long", b"v" * 300)]
    assert neutral_fields(block) is not None and len(decoder.header_table.dynamic_entries) == 0
    assert neutral_fields(hpack.Encoder().encode([("x-new", "indexed")])) is None


@PROPS
@given(st.lists(st.binary(max_size=400), max_size=12), st.booleans())
def test_any_bytes_after_the_preface_never_crash_and_stay_bounded(chunks, answer):
    server = Server()
    opened(server)
    encoder = hpack.Encoder()
    server.conn.receive(headers_frame(1, encoder, end_stream=False))  # an open stream the noise may touch
    for chunk in chunks:
        server.conn.receive(chunk)
        if answer:
            for req in server.requests:
                server.conn.respond(req[0], 200, [(b"content-length", b"3")], b"abc")
            server.requests.clear()
        assert len(server.conn.buf) < 9 + FRAME_SIZE
        assert len(server.conn.streams) <= MAX_STREAMS
        assert len(server.conn.block or b"") <= MAX_BLOCK
    assert server.closed == server.conn.closed  # closed only by saying so (GOAWAY), or on the client's GOAWAY


HEADER_VALUES = st.sampled_from([b"GET", b"POST", b"/dns-query", b"/dns-query?dns=AAAB", b"/x", b"application/dns-message",
                                 b"text/plain", b"v" * 70])


@PROPS
@given(st.lists(st.lists(st.tuples(st.sampled_from([b":method", b":path", b"content-type", b"x-other"]), HEADER_VALUES,
                                   st.booleans()), min_size=1, max_size=6), min_size=1, max_size=12))
def test_remembered_blocks_and_fields_decode_as_hpack_does(requests):
    """Blocks that index new fields (and so move the table's indices) between ones that do not."""
    encoder, reference, blocks = hpack.Encoder(), hpack.Decoder(), HeaderBlocks()
    for fields in requests:
        block = encoder.encode([hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v) for n, v, never in fields])
        assert blocks.decode(block) == request_of(reference.decode(block, raw=True))
