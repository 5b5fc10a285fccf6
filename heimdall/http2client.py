"""The client side of one HTTP/2 connection (RFC 9113), as much of it as a DoH upstream needs, by hand.

Every miss forwarded over DoH is a stream: a POST's HEADERS and DATA out, a
reply's HEADERS and DATA back. A general state machine (h2) cost more per
miss than the rest of forwarding it; this one knows that shape. The request's
header block is fixed but for its content-length and uses no dynamic table,
so it is made once per connection. Replies are decoded by `hpack`, and a
reply head that leaves the table alone (a server's second and later, once
its table holds what it sends) is remembered, as the listener remembers
request blocks (heimdall/headerblock.py). We push nothing and accept no
pushes (SETTINGS_ENABLE_PUSH 0), ignore priorities and skip frame types we
do not know.

A stream's end comes back through `answered` (status 200 and the DNS
content-type, with the body) or `failed` (another status, a reset, a
malformed reply); the connection's end through `ended` (a protocol error,
which we answer with GOAWAY, or the server's GOAWAY). Bytes to send collect
until `data_to_send`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

import hpack

from heimdall.headerblock import hpack_int, neutral_fields, remember
from heimdall.http2frame import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_BLOCK,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ACK,
    WINDOW,
    WINDOW_UPDATE,
    PeerSettings,
    Violation,
    frame,
)

CONTENT_TYPE = b"application/dns-message"
CANCEL = 0x8
CONTENT_LENGTH = hpack_int(28, 4)  # a literal not indexed with the static table's name 28; its value follows
STREAM_WINDOW = 2 * WINDOW  # a whole DNS message (up to 65,535 bytes) with padding fits a stream's window
CONNECTION_WINDOW = 1 << 20  # room for many replies in flight at once; given back as they are read
MAX_HEAD = 65536  # a reply head's decoded size (SETTINGS_MAX_HEADER_LIST_SIZE): far past any DoH server's
CLIENT_SETTINGS = frame(SETTINGS, 0, 0, struct.pack(">HIHIHI", ENABLE_PUSH, 0, INITIAL_WINDOW_SIZE, STREAM_WINDOW,
                                                    MAX_HEADER_LIST_SIZE, MAX_HEAD))
ERRORS = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
          0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
          0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
          0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}


def error_name(code: int) -> str:
    return ERRORS.get(code, f"error {code:#x}")


class NoStream(Exception):
    """No new stream can open here (the connection is over, or its stream IDs are used up)."""


@dataclass(slots=True)
class Exchange:
    """One query's stream."""

    qid: int
    send_window: int
    unsent: bytes = b""  # the query's bytes waiting for the server's flow-control windows
    status: bytes | None = None  # the final (not 1xx) status, once its HEADERS came
    body: bytearray = field(default_factory=bytearray)


def request_head(authority: bytes, path: bytes) -> bytes:
    """A POST's header block up to its content-length: indexed and literal-without-indexing fields."""
    def literal(index: int, value: bytes) -> bytes:
        return hpack_int(index, 4) + hpack_int(len(value), 7) + value
    return (b"\x83\x87" + literal(1, authority) + literal(4, path)  # :method POST, :scheme https
            + literal(31, CONTENT_TYPE) + literal(19, CONTENT_TYPE))  # content-type, accept


class Http2Client:
    """One connection's streams: `request` sends a query, replies come back through the callbacks."""

    def __init__(self, authority: bytes, path: bytes, answered: Callable[[int, bytes], None],
                 failed: Callable[[int, str], None], ended: Callable[[str], None]) -> None:
        self.answered, self.failed, self.ended = answered, failed, ended
        self.head = request_head(authority, path)
        self.streams: dict[int, Exchange] = {}
        self.next_sid = 1
        self.max_streams = MAX_WINDOW  # the server's SETTINGS_MAX_CONCURRENT_STREAMS
        self.peer = PeerSettings()
        self.send_window = WINDOW  # the connection's, for our DATA
        self.recv_window = CONNECTION_WINDOW
        self.consumed = 0  # DATA bytes read and not yet given back (WINDOW_UPDATE)
        self.buf = bytearray()
        self.settled = False  # the server's first SETTINGS came, as its preface must begin
        self.block: bytearray | None = None  # a header block waiting for its CONTINUATIONs
        self.block_sid = self.block_flags = 0
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEAD)
        self.heads: dict[bytes, tuple[bytes, bytes]] = {}  # blocks that leave the table alone, decoded
        self.closed = False
        self.out: list[bytes] = [PREFACE, CLIENT_SETTINGS,
                                 frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - WINDOW))]

    def data_to_send(self) -> bytes:
        out = b"".join(self.out)
        self.out.clear()
        return out

    def request(self, qid: int, message: bytes) -> int:
        """Open a stream for one query: its HEADERS, and its DATA as far as the windows allow."""
        sid = self.next_sid
        if self.closed or sid > MAX_WINDOW:
            raise NoStream("the connection is over" if self.closed else "stream IDs used up")
        self.next_sid += 2
        size = len(message)
        length = str(size).encode()
        block = self.head + CONTENT_LENGTH + bytes([len(length)]) + length
        if self.peer.table_update:
            block, self.peer.table_update = self.peer.table_update + block, b""
        if size <= self.send_window and size <= self.peer.window and size <= self.peer.frame:
            self.send_window -= size  # the whole query at once, as nearly every DNS query goes
            self.out.append(HEADER.pack(len(block) << 8 | HEADERS, END_HEADERS, sid) + block
                            + HEADER.pack(size << 8 | DATA, END_STREAM, sid) + message)
            self.streams[sid] = Exchange(qid, self.peer.window - size)
        else:
            self.out.append(frame(HEADERS, END_HEADERS, sid, block))
            ex = self.streams[sid] = Exchange(qid, self.peer.window, message)
            self.send_body(sid, ex)
        return sid

    def cancel(self, sid: int) -> bool:
        """We gave up on the stream: RST_STREAM so the server stops working on it. True if one was sent."""
        ex = self.streams.pop(sid, None)
        if ex is None or self.closed:
            return False
        self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
        return True

    def receive(self, data: bytes) -> None:
        """Everything the server sent: replies and failures through the callbacks, our answers queued."""
        if self.closed:
            return
        self.buf += data
        try:
            self.frames()
        except Violation as exc:
            self.out.append(frame(GOAWAY, 0, 0, struct.pack(">II", 0, exc.code)))
            self.closed = True
            self.ended(f"HTTP/2 protocol error ({error_name(exc.code)})")
            return
        if self.consumed >= CONNECTION_WINDOW // 4 and not self.closed:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.consumed)))
            self.recv_window += self.consumed
            self.consumed = 0

    def frames(self) -> None:
        buf = self.buf
        pos, end = 0, len(buf)
        while end - pos >= 9 and not self.closed:
            head, flags, sid = HEADER.unpack_from(buf, pos)
            size, kind, sid = head >> 8, head & 0xFF, sid & MAX_WINDOW
            if size > FRAME_SIZE:
                raise Violation(FRAME_SIZE_ERROR)
            if end - pos - 9 < size:
                break
            payload = bytes(buf[pos + 9:pos + 9 + size])
            pos += 9 + size
            if not self.settled:
                if kind != SETTINGS or flags & ACK:
                    raise Violation(PROTOCOL_ERROR)  # the server's preface is a SETTINGS frame
                self.settled = True
            self.frame(kind, flags, sid, payload)
        del buf[:pos]

    def frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.block is not None and kind != CONTINUATION:
            raise Violation(PROTOCOL_ERROR)  # a header block must not be interrupted
        if kind == DATA:
            self.data(flags, sid, payload)
        elif kind == HEADERS:
            self.headers(flags, sid, payload)
        elif kind == CONTINUATION:
            self.continuation(flags, sid, payload)
        elif kind == SETTINGS:
            self.settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self.window_update(sid, payload)
        elif kind == PING:
            if sid or len(payload) != 8:
                raise Violation(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR)
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self.check_stream(sid)
            if len(payload) != 4:
                raise Violation(FRAME_SIZE_ERROR)
            self.fail_stream(sid, f"stream reset ({error_name(struct.unpack('>I', payload)[0])})")
        elif kind == GOAWAY:
            if sid or len(payload) < 8:
                raise Violation(PROTOCOL_ERROR)
            self.closed = True
            code = struct.unpack_from(">I", payload, 4)[0]
            self.ended(f"the server ended the HTTP/2 connection (GOAWAY {error_name(code)})")
        elif kind == PUSH_PROMISE:
            raise Violation(PROTOCOL_ERROR)  # we said SETTINGS_ENABLE_PUSH 0

    def check_stream(self, sid: int) -> None:
        """A stream frame must name a stream we opened."""
        if sid == 0 or sid % 2 == 0 or sid >= self.next_sid:
            raise Violation(PROTOCOL_ERROR)

    def headers(self, flags: int, sid: int, payload: bytes) -> None:
        self.check_stream(sid)
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise Violation(PROTOCOL_ERROR)
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if end < start:
            raise Violation(PROTOCOL_ERROR)
        if flags & END_HEADERS:
            self.header_block(sid, flags, payload[start:end])
        else:
            self.block, self.block_sid, self.block_flags = bytearray(payload[start:end]), sid, flags

    def continuation(self, flags: int, sid: int, payload: bytes) -> None:
        block = self.block
        if block is None or sid != self.block_sid:
            raise Violation(PROTOCOL_ERROR)
        block += payload
        if len(block) > MAX_BLOCK:
            raise Violation(ENHANCE_YOUR_CALM)
        if flags & END_HEADERS:
            self.block = None
            self.header_block(sid, self.block_flags, bytes(block))

    def header_block(self, sid: int, flags: int, block: bytes) -> None:
        """A reply's head, an informational (1xx) one, or trailers: decoded either way, as HPACK is shared."""
        status, ctype = self.head_of(block)
        ex = self.streams.get(sid)
        if ex is None:
            return  # a stream we gave up on
        if ex.status is None:
            if status[:1] == b"1" and not flags & END_STREAM:
                return  # informational: the reply's own head follows
            ex.status = status
            still_open = not flags & END_STREAM
            if status != b"200":
                self.fail_stream(sid, f"answered HTTP status {status.decode('latin-1') or 'none'}", reset=still_open)
                return
            if ctype.split(b";")[0].strip().lower() != CONTENT_TYPE:
                self.fail_stream(sid, f"answered content-type {ctype.decode('latin-1')!r}", reset=still_open)
                return
        elif not flags & END_STREAM:
            self.fail_stream(sid, "sent a second head without ending the stream", reset=True)
            return
        if flags & END_STREAM:
            self.finish(sid, ex)

    def head_of(self, block: bytes) -> tuple[bytes, bytes]:
        """A block's :status and content-type. A block that leaves the table alone (what a server
        sends once its table holds its reply headers) means the same until one that does not, so
        what it decodes to is remembered until then."""
        head = self.heads.get(block)
        if head is not None:
            return head
        try:
            fields = self.decoder.decode(block, raw=True)
        except hpack.HPACKError:
            raise Violation(COMPRESSION_ERROR) from None
        status, ctype = b"", b""
        for name, value in fields:
            if name == b":status":
                status = value
            elif name == b"content-type":
                ctype = value
        if neutral_fields(block) is None:
            self.heads.clear()  # the table changed: what its indices meant is gone
        else:
            remember(self.heads, block, (status, ctype))
        return status, ctype

    def data(self, flags: int, sid: int, payload: bytes) -> None:
        self.check_stream(sid)
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise Violation(FLOW_CONTROL_ERROR)
        self.consumed += size
        start, end = 0, size
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise Violation(PROTOCOL_ERROR)
            start, end = 1, size - payload[0]
        ex = self.streams.get(sid)
        if ex is None:
            return  # a stream we gave up on: its bytes still count against the connection's window
        if ex.status is None:
            self.fail_stream(sid, "sent DATA before its head", reset=True)
            return
        ex.body += payload[start:end]
        if len(ex.body) > 65535:
            self.fail_stream(sid, "answered more than a DNS message can hold", reset=not flags & END_STREAM)
        elif flags & END_STREAM:
            self.finish(sid, ex)

    def finish(self, sid: int, ex: Exchange) -> None:
        del self.streams[sid]
        self.answered(ex.qid, bytes(ex.body))

    def fail_stream(self, sid: int, reason: str, reset: bool = False) -> None:
        ex = self.streams.pop(sid, None)
        if ex is None:
            return
        if reset:
            self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
        self.failed(ex.qid, reason)

    def settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise Violation(PROTOCOL_ERROR)
        if flags & ACK:
            if payload:
                raise Violation(FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise Violation(FRAME_SIZE_ERROR)
        for key, value in struct.iter_unpack(">HI", payload):
            if key == ENABLE_PUSH and value:
                raise Violation(PROTOCOL_ERROR)  # a server never enables push
            if key == MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            delta = self.peer.take(key, value)
            for ex in self.streams.values():
                ex.send_window += delta
            if delta > 0:
                self.send_waiting()
        self.out.append(SETTINGS_ACK)

    def window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Violation(FRAME_SIZE_ERROR)
        increment = struct.unpack(">I", payload)[0] & MAX_WINDOW
        if sid == 0:
            if increment == 0:
                raise Violation(PROTOCOL_ERROR)
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise Violation(FLOW_CONTROL_ERROR)
            self.send_waiting()
            return
        self.check_stream(sid)
        ex = self.streams.get(sid)
        if ex is None:
            return
        if increment == 0:
            self.fail_stream(sid, "sent an empty WINDOW_UPDATE", reset=True)
            return
        ex.send_window += increment
        if ex.send_window > MAX_WINDOW:
            self.fail_stream(sid, "overflowed a stream's window", reset=True)
            return
        self.send_body(sid, ex)

    def send_body(self, sid: int, ex: Exchange) -> None:
        """As much of the query as the windows allow; the rest waits for a WINDOW_UPDATE."""
        data = ex.unsent
        while data:
            room = min(self.send_window, ex.send_window, self.peer.frame)
            if room <= 0:
                break
            chunk, data = data[:room], data[room:]
            self.send_window -= len(chunk)
            ex.send_window -= len(chunk)
            self.out.append(frame(DATA, 0 if data else END_STREAM, sid, chunk))
        ex.unsent = data

    def send_waiting(self) -> None:
        for sid, ex in list(self.streams.items()):
            if ex.unsent:
                self.send_body(sid, ex)
