"""heimdall/http2client.py in process, against the h2 library as the server (an independent
HTTP/2 implementation that checks what we send) and against raw bytes: requests, replies in
any order and any chunking, flow control both ways, every way a stream or the connection ends."""

from __future__ import annotations

import os
import random
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall.http2client import CONNECTION_WINDOW, Http2Client, NoStream
from heimdall.http2frame import (COMPRESSION_ERROR, DATA, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY, HEADERS,
                                 PROTOCOL_ERROR, PUSH_PROMISE, SETTINGS, WINDOW_UPDATE, frame)

PROPS = settings(max_examples=int(os.environ.get("HEIMDALL_PROP_EXAMPLES", "300")) // 3, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
DNS = "application/dns-message"


class Pair:
    """Our client and an h2 server, with what reached each side."""

    def __init__(self, chunk: int = 1 << 20, **server_settings: int) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.failures: list[tuple[int, str]] = []
        self.untaken: list[int] = []  # failed queries the server never took (safe to ask again)
        self.ends: list[str] = []
        self.client = Http2Client(b"dns.test:8443", b"/dns-query", lambda q, b: self.answers.append((q, b)),
                                  self.failed, self.ends.append)
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.server.initiate_connection()
        if server_settings:
            self.server.update_settings({getattr(h2.settings.SettingCodes, k): v for k, v in server_settings.items()})
        self.chunk = chunk
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: list[int] = []  # streams whose request came whole, in order
        self.events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> None:
        """Move bytes both ways until neither side has any to send."""
        while True:
            up = self.client.data_to_send()
            if up:
                for event in self.server.receive_data(up):
                    self.server_event(event)
            down = self.server.data_to_send()
            for i in range(0, len(down), self.chunk):
                self.client.receive(down[i:i + self.chunk])
            if not up and not down:
                return

    def failed(self, qid: int, reason: str, untaken: bool) -> None:
        self.failures.append((qid, reason))
        if untaken:
            self.untaken.append(qid)

    def ask(self, qid: int, message: bytes = b"q") -> int:
        """One query sent and taken by the server: its stream."""
        sid = self.client.request(qid, message)
        self.pump()
        return sid

    def server_event(self, event: h2.events.Event) -> None:
        self.events.append(event)
        if isinstance(event, h2.events.RequestReceived):
            self.heads[event.stream_id] = dict(event.headers)
            self.bodies[event.stream_id] = bytearray()
        elif isinstance(event, h2.events.DataReceived):
            self.bodies[event.stream_id] += event.data
            self.server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.append(event.stream_id)

    def reply(self, sid: int, body: bytes, status: str = "200", ctype: str = DNS, pad: int | None = None,
              **extra: str) -> None:
        headers = [(":status", status), ("content-type", ctype), ("content-length", str(len(body))),
                   *extra.items()]
        self.server.send_headers(sid, headers, end_stream=not body)
        if body:
            self.data(sid, body, end=True, pad=pad)
        self.pump()

    def data(self, sid: int, body: bytes, end: bool = False, pad: int | None = None) -> None:
        """The body in frames as large as the client allows, each padded by `pad`."""
        step = 16_384 - 256
        for i in range(0, len(body), step):
            last = i + step >= len(body)
            self.server.send_data(sid, body[i:i + step], end_stream=end and last, pad_length=pad)

    def resets(self) -> list[tuple[int, int]]:
        return [(e.stream_id, e.error_code) for e in self.events if isinstance(e, h2.events.StreamReset)]


def test_a_query_is_a_post_the_server_accepts_and_its_reply_comes_back():
    p = Pair()
    sid = p.client.request(0x1234, b"query-bytes")
    p.pump()
    assert p.heads[sid] == {":method": "POST", ":scheme": "https", ":authority": "dns.test:8443",
                            ":path": "/dns-query", "content-type": DNS, "accept": DNS, "content-length": "11"}
    assert p.bodies[sid] == b"query-bytes" and p.ended == [sid]
    p.reply(sid, b"answer", **{"cache-control": "max-age=300"})
    assert p.answers == [(0x1234, b"answer")] and not p.failures and not p.ends
    assert p.client.streams == {}


@PROPS
@given(sizes=st.lists(st.integers(1, 40_000), min_size=1, max_size=6), window=st.integers(1, 70_000),
       frame_size=st.integers(16_384, 40_000), chunk=st.integers(1, 3000), replies=st.data())
def test_queries_and_replies_of_any_size_cross_any_windows_in_any_order(sizes, window, frame_size, chunk, replies):
    """The server's windows and frame size bound what we send (h2 refuses any excess); replies come
    back in any order, padded or not, read in any chunks; each reaches the query it answers."""
    p = Pair(chunk=chunk, INITIAL_WINDOW_SIZE=window, MAX_FRAME_SIZE=frame_size)
    queries = {qid: random.Random(qid).randbytes(n) for qid, n in enumerate(sizes)}
    sids = {qid: p.client.request(qid, q) for qid, q in queries.items()}
    p.pump()
    assert {sid: bytes(p.bodies[sid]) for sid in p.ended} == {sids[q]: m for q, m in queries.items()}
    order = replies.draw(st.permutations(list(queries)))
    want = []
    for qid in order:
        body = replies.draw(st.binary(min_size=1, max_size=20_000))
        pad = replies.draw(st.none() | st.integers(0, 255))
        p.reply(sids[qid], body, pad=pad)
        want.append((qid, body))
    assert p.answers == want and not p.failures and not p.ends


def test_replies_use_the_servers_header_table_as_it_changes():
    """h2 indexes its reply headers: the second reply's head is mostly indices into our decoder's table."""
    p = Pair()
    for qid in range(5):
        sid = p.ask(qid)
        p.reply(sid, bytes([qid]) * (qid + 1), **{"cache-control": f"max-age={qid}"})
    assert p.answers == [(q, bytes([q]) * (q + 1)) for q in range(5)]


def test_a_remembered_head_is_read_again_once_the_table_changes():
    """A head of indices alone is remembered; after a head that adds to the table, the same
    bytes name other entries and are decoded again."""
    answers: list[int] = []
    failures: list[tuple[int, str]] = []
    client = Http2Client(b"x", b"/", lambda q, b: answers.append(q), lambda q, r, _u: failures.append((q, r)), print)
    client.receive(frame(SETTINGS, 0, 0))
    for qid in range(1, 6):
        client.request(qid, b"q")
    dns_type, html = b"application/dns-message", b"text/html"
    heads = [b"\x88\x5f" + bytes([len(dns_type)]) + dns_type,  # :status 200, content-type added to the table
             b"\x88\xbe",  # :status 200, the table's first entry: application/dns-message
             b"\x88\xbe",  # the same bytes again: remembered
             b"\x88\x5f" + bytes([len(html)]) + html,  # text/html added: now the table's first entry
             b"\x88\xbe"]  # the same bytes as before, naming text/html now
    for sid, head in zip(range(1, 10, 2), heads):
        client.receive(frame(HEADERS, 0x5, sid, head))  # END_HEADERS | END_STREAM
    assert answers == [1, 2, 3]
    assert failures == [(4, "answered content-type 'text/html'"), (5, "answered content-type 'text/html'")]


def test_a_long_head_in_continuations_an_informational_head_and_trailers():
    p = Pair()
    sid = p.ask(1)
    p.server.send_headers(sid, [(":status", "103"), ("link", "</x>")])
    p.server.send_headers(sid, [(":status", "200"), ("content-type", DNS), ("x-long", "v" * 30_000)])
    p.server.send_data(sid, b"body")
    p.server.send_headers(sid, [("x-trailer", "t")], end_stream=True)
    p.pump()
    assert p.answers == [(1, b"body")] and not p.failures


@pytest.mark.parametrize("status, ctype, reason", [("404", DNS, "answered HTTP status 404"),
                                                   ("200", "text/html", "answered content-type 'text/html'")])
def test_another_status_or_type_fails_the_stream_and_the_connection_goes_on(status, ctype, reason):
    p = Pair()
    ended_sid = p.client.request(1, b"q")
    open_sid = p.ask(2)
    p.reply(ended_sid, b"", status=status, ctype=ctype)  # HEADERS ends the stream: nothing to reset
    p.server.send_headers(open_sid, [(":status", status), ("content-type", ctype)])  # a body would follow
    p.pump()
    assert p.failures == [(1, reason), (2, reason)] and not p.untaken  # worked on: not asked again
    assert p.resets() == [(open_sid, h2.errors.ErrorCodes.CANCEL)]
    sid = p.ask(3)
    p.reply(sid, b"fine")
    assert p.answers == [(3, b"fine")] and not p.ends


def test_a_reset_stream_fails_its_query_alone():
    p = Pair()
    a, b = p.client.request(1, b"q"), p.client.request(2, b"q")
    p.pump()
    p.server.reset_stream(a, h2.errors.ErrorCodes.REFUSED_STREAM)
    p.reply(b, b"ok")
    assert p.failures == [(1, "stream reset (REFUSED_STREAM)")] and p.answers == [(2, b"ok")]
    assert p.untaken == [1]  # refused: never worked on, safe to ask again


def test_a_cancelled_stream_is_reset_and_its_late_reply_ignored():
    p = Pair()
    a, b = p.client.request(1, b"q"), p.client.request(2, b"q")
    p.pump()
    p.server.send_headers(a, [(":status", "200"), ("content-type", DNS)])
    p.data(a, b"x" * 30_000)  # on its way while we give up
    down = p.server.data_to_send()
    assert p.client.cancel(a) and not p.client.cancel(a)
    p.client.receive(down)
    p.pump()
    assert p.resets() == [(a, h2.errors.ErrorCodes.CANCEL)]
    p.reply(b, b"ok")
    assert p.answers == [(2, b"ok")] and not p.failures and not p.ends


def test_the_connection_window_is_given_back_as_replies_are_read():
    """More reply bytes than the connection's window over the connection's life: all arrive."""
    p = Pair()
    body = b"r" * 60_000
    for qid in range(3 * CONNECTION_WINDOW // len(body)):
        sid = p.ask(qid)
        p.reply(sid, body)
    assert len(p.answers) == 3 * CONNECTION_WINDOW // len(body) and not p.failures and not p.ends


def test_settings_ping_and_the_servers_stream_limit():
    p = Pair(MAX_CONCURRENT_STREAMS=7, HEADER_TABLE_SIZE=0)
    assert p.client.max_streams == 7
    p.server.ping(b"12345678")
    p.pump()
    assert any(isinstance(e, h2.events.PingAckReceived) for e in p.events)
    sid = p.client.request(1, b"q")  # begins with a table size update (0): h2 refuses a block without it
    p.pump()
    p.reply(sid, b"ok")
    assert p.answers == [(1, b"ok")] and not p.ends


def test_goaway_fails_the_streams_not_taken_and_lets_the_others_finish():
    p = Pair()
    taken, untaken = p.client.request(1, b"q"), p.client.request(2, b"q")
    p.pump()
    p.client.receive(frame(GOAWAY, 0, 0, struct.pack(">II", taken, 0)))
    assert p.client.goaway and p.failures == [(2, "stream not taken before the server's GOAWAY (NO_ERROR)")]
    assert p.untaken == [2]
    with pytest.raises(NoStream):
        p.client.request(3, b"q")
    p.reply(taken, b"still answered")
    assert p.answers == [(1, b"still answered")] and not p.ends and untaken not in p.client.streams


def settled() -> tuple[Http2Client, list[str]]:
    ends: list[str] = []
    client = Http2Client(b"x", b"/dns-query", lambda *a: None, lambda *a: None, ends.append)
    client.receive(frame(SETTINGS, 0, 0))
    client.request(1, b"q")
    client.data_to_send()
    return client, ends


VIOLATIONS = {
    "DATA on stream 0": (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    "DATA on a stream never opened": (frame(DATA, 0, 5, b"x"), PROTOCOL_ERROR),
    "HEADERS on an even stream": (frame(HEADERS, 0x4, 2, b"\x88"), PROTOCOL_ERROR),
    "a frame over 16384 bytes": (frame(DATA, 0, 1, b"x" * 16_385), FRAME_SIZE_ERROR),
    "a push": (frame(PUSH_PROMISE, 0x4, 1, b"\0\0\0\2\x88"), PROTOCOL_ERROR),
    "a broken header block": (frame(HEADERS, 0x4, 1, b"\xff\xff\xff\xff\xff"), COMPRESSION_ERROR),
    "a head cut by another frame": (frame(HEADERS, 0, 1, b"\x88") + frame(DATA, 0, 1, b"x"), PROTOCOL_ERROR),
    "a window past 2^31-1": (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR),
    "a stream's window past 2^31-1": (frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100))
                                      + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31 - 1)), FLOW_CONTROL_ERROR),
    "a short GOAWAY": (frame(GOAWAY, 0, 0, b"\0\0\0\1"), FRAME_SIZE_ERROR),
}


@pytest.mark.parametrize("case", VIOLATIONS)
def test_a_protocol_violation_is_answered_with_goaway_and_ends_the_connection(case):
    data, code = VIOLATIONS[case]
    client, ends = settled()
    client.receive(data)
    out = client.data_to_send()
    assert out[3] == GOAWAY and struct.unpack(">I", out[13:17])[0] == code
    assert len(ends) == 1 and ends[0].startswith("HTTP/2 protocol error")
    client.receive(frame(SETTINGS, 0, 0))  # nothing more is read
    assert client.data_to_send() == b"" and len(ends) == 1


def test_the_servers_preface_must_be_settings():
    ends: list[str] = []
    client = Http2Client(b"x", b"/", lambda *a: None, lambda *a: None, ends.append)
    client.data_to_send()
    client.receive(frame(DATA, 0, 1, b"x"))
    assert ends == ["HTTP/2 protocol error (PROTOCOL_ERROR)"]


@PROPS
@given(st.binary(max_size=400), st.integers(1, 64))
def test_any_bytes_from_the_server_end_in_replies_failures_or_goaway_never_an_exception(data, chunk):
    client, ends = settled()
    for i in range(0, len(data), chunk):
        client.receive(data[i:i + chunk])
    client.data_to_send()
    assert len(ends) <= 1
