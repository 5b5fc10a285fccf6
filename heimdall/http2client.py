"""The client side of one HTTP/2 connection (RFC 9113), as much of it as a DoH upstream needs, by hand.

Every miss forwarded over DoH is a stream: a POST's HEADERS and DATA out, a
reply's HEADERS and DATA back. A general state machine (h2) cost more per
miss than the rest of forwarding it; this one knows that shape. The request's
header block is fixed but for its content-length and uses no dynamic table,
so it is made once per connection; reply heads are decoded by `hpack`, and
one that leaves the table alone is remembered (heimdall/headerblock.py's
RequestHead, ReplyHeadBlocks). We push nothing and accept no
pushes (SETTINGS_ENABLE_PUSH 0), ignore priorities and skip frame types we
do not know.

A stream's end comes back through `answered` (status 200 and the DNS
content-type, with the body) or `failed` (another status, a reset, a
malformed reply; and whether the server never took the query: refused or
past its GOAWAY, so it may be asked again); the connection's end through `ended` (a protocol error,
which we answer with GOAWAY). The server's GOAWAY lets the streams it took
finish and fails the others, which it never saw (`goaway` tells the caller
to open no more and close once those are done). Bytes to send collect until
`data_to_send`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from heimdall.headerblock import DNS_MESSAGE, BadHeaderBlock, ReplyHeadBlocks, RequestHead
from heimdall.http2frame import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADER,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW,
    WINDOW_UPDATE,
    Http2Endpoint,
    Violation,
    error_name,
    frame,
)

STREAM_WINDOW = 2 * WINDOW  # a whole DNS message (up to 65,535 bytes) with padding fits a stream's window
CONNECTION_WINDOW = 1 << 20  # room for many replies in flight at once; given back as they are read
MAX_HEAD = 65536  # a reply head's decoded size (SETTINGS_MAX_HEADER_LIST_SIZE): far past any DoH server's
CLIENT_SETTINGS = frame(SETTINGS, 0, 0, struct.pack(">HIHIHI", ENABLE_PUSH, 0, INITIAL_WINDOW_SIZE, STREAM_WINDOW,
                                                    MAX_HEADER_LIST_SIZE, MAX_HEAD))


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


class Http2Client(Http2Endpoint):
    """One connection's streams: `request` sends a query, replies come back through the callbacks."""

    def __init__(self, authority: bytes, path: bytes, answered: Callable[[int, bytes], None],
                 failed: Callable[[int, str, bool], None], ended: Callable[[str], None]) -> None:
        super().__init__()
        self.answered, self.failed, self.ended = answered, failed, ended
        self.head = RequestHead(authority, path)
        self.streams: dict[int, Exchange] = {}
        self.next_sid = 1
        self.max_streams = MAX_WINDOW  # the server's SETTINGS_MAX_CONCURRENT_STREAMS
        self.recv_window = CONNECTION_WINDOW
        self.settled = False  # the server's first SETTINGS came, as its preface must begin
        self.heads = ReplyHeadBlocks(MAX_HEAD)
        self.goaway = False  # the server is leaving: no new streams; those it took may still be answered
        self.out += [PREFACE, CLIENT_SETTINGS, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - WINDOW))]

    def data_to_send(self) -> bytes:
        out = b"".join(self.out)
        self.out.clear()
        return out

    def request(self, qid: int, message: bytes) -> int:
        """Open a stream for one query: its HEADERS, and its DATA as far as the windows allow."""
        sid = self.next_sid
        if self.closed or self.goaway or sid > MAX_WINDOW:
            raise NoStream("stream IDs used up" if sid > MAX_WINDOW else "the connection is over")
        self.next_sid += 2
        size = len(message)
        block = self.head.encode(size)
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

    def received(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if not self.settled:
            if kind != SETTINGS or flags & ACK:
                raise Violation(PROTOCOL_ERROR)  # the server's preface is a SETTINGS frame
            self.settled = True
        self.frame(kind, flags, sid, payload)

    def on_rst_stream(self, sid: int, code: int) -> None:
        self.fail_stream(sid, f"stream reset ({error_name(code)})", untaken=code == REFUSED_STREAM)

    def on_goaway(self, last_sid: int, code: int) -> None:
        """The server is leaving: streams past the last it took fail (it never saw them: safe to ask elsewhere)."""
        self.goaway = True
        for untaken in [s for s in self.streams if s > last_sid]:
            self.fail_stream(untaken, f"stream not taken before the server's GOAWAY ({error_name(code)})", untaken=True)

    def check_stream(self, sid: int) -> None:
        """A stream frame must name a stream we opened."""
        if sid == 0 or sid % 2 == 0 or sid >= self.next_sid:
            raise Violation(PROTOCOL_ERROR)

    def headers(self, flags: int, sid: int, payload: bytes) -> None:
        self.check_stream(sid)
        self.headers_payload(flags, sid, payload)

    def header_block(self, sid: int, flags: int, block: bytes) -> None:
        """A reply's head, an informational (1xx) one, or trailers: decoded either way, as HPACK is shared."""
        try:
            status, ctype = self.heads.decode(block)
        except BadHeaderBlock:
            raise Violation(COMPRESSION_ERROR) from None
        ex = self.streams.get(sid)
        if ex is None:
            return  # a stream we gave up on
        if ex.status is None:
            if status[:1] == b"1" and not flags & END_STREAM:
                return  # informational: the reply's own head follows
            ex.status = status
            still_open = not flags & END_STREAM or bool(ex.unsent)
            if status != b"200":
                self.fail_stream(sid, f"answered HTTP status {status.decode('latin-1') or 'none'}", reset=still_open)
                return
            if ctype.split(b";")[0].strip().lower() != DNS_MESSAGE:
                self.fail_stream(sid, f"answered content-type {ctype.decode('latin-1')!r}", reset=still_open)
                return
        elif not flags & END_STREAM:
            self.fail_stream(sid, "sent a second head without ending the stream", reset=True)
            return
        if flags & END_STREAM:
            self.finish(sid, ex)

    def data(self, flags: int, sid: int, payload: bytes) -> None:
        start, end = self.data_payload(flags, sid, payload)
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
        if ex.unsent:  # answered before the whole query went: the rest is not wanted
            self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
        self.answered(ex.qid, bytes(ex.body))

    def fail_stream(self, sid: int, reason: str, reset: bool = False, untaken: bool = False) -> None:
        """The stream's query failed; `untaken`: the server never worked on it (safe to ask again)."""
        ex = self.streams.pop(sid, None)
        if ex is None:
            return
        if reset:
            self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
        self.failed(ex.qid, reason, untaken)

    def setting(self, key: int, value: int) -> None:
        if key == ENABLE_PUSH and value:
            raise Violation(PROTOCOL_ERROR)  # a server never enables push
        if key == MAX_CONCURRENT_STREAMS:
            self.max_streams = value

    def stream_error(self, sid: int, code: int) -> None:
        self.fail_stream(sid, f"stream error ({error_name(code)})", reset=True)
