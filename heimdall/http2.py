"""The server side of one HTTP/2 connection (RFC 9113), as much of it as DoH needs, by hand.

DoH over HTTP/2 is a hot path: a general state machine (h2) cost more per
request than TLS, the cache and the pipeline together. A DoH server
only ever answers: it reads requests (HEADERS, CONTINUATION, DATA), replies
with one HEADERS and DATA per stream, and keeps the connection's bookkeeping
(SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY). It never pushes, ignores
priorities, and skips frame types it does not know. Header blocks are
heimdall/headerblock.py's (hpack, and heimdall/hpack.c for what a GET brings anew).

Every violation is answered as RFC 9113 says: a stream error resets the
stream (RST_STREAM), a connection error sends GOAWAY and closes. Buffers are
bounded: at most one frame (16384 bytes, the size we advertise) is held
incomplete and a header block is at most MAX_BLOCK bytes.

Each reply (with the frames queued before it) is a TLS record of its own, as
some DoH clients (dnsperf) take one DNS reply from each record they read; the
records of one `receive` go out in one socket write at its end, a reply made
later (after an upstream miss) at once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from heimdall.headerblock import BadHeaderBlock, HeaderBlocks, Headers, ReplyHeads, Request
from heimdall.http2frame import (
    COMPRESSION_ERROR,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADER,
    HEADERS,
    MAX_STREAMS,
    OUR_SETTINGS,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    STREAM_CLOSED,
    WHOLE_BLOCK,
    WINDOW,
    WINDOW_UPDATE,
    Http2Endpoint,
    Violation,
    frame,
    take_preface,
)

OnRequest = Callable[[int, bytes, bytes, "bytes | None", bytes], None]  # (stream, method, path, type, body)


@dataclass(slots=True)
class Stream:
    """A client stream we have not finished answering."""

    recv_window: int
    send_window: int
    request: Request | None = None
    body: bytearray | None = None  # made by the first DATA frame: a GET has none
    ended: bool = False  # the client's side is done (END_STREAM seen)
    answered: bool = False
    unsent: bytes = b""  # reply bytes waiting for the client's flow-control window


class Http2Connection(Http2Endpoint):
    """One connection's frames: requests go to `on_request`, replies come back through `respond`."""

    def __init__(self, on_request: OnRequest, write: Callable[[list[bytes]], None], close: Callable[[], None]):
        super().__init__()
        self.on_request, self.write, self.close = on_request, write, close
        self.preface = False  # the client's preface and first SETTINGS have arrived
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0  # the highest stream the client opened
        self.blocks = HeaderBlocks()
        self.heads = ReplyHeads()
        self.out.append(OUR_SETTINGS)  # frames of the record being made
        self.records: list[bytes] = []  # whole records not yet written
        self.receiving = False
        self.leaving = False  # the client's GOAWAY came: close once every stream it opened is answered

    def receive(self, data: bytes) -> None:
        """Everything the client sent, parsed; replies go out as they are made, the rest at the end."""
        if self.closed:
            return
        self.receiving = True
        try:
            self.buf += data
            self.frames()
        except Violation as exc:
            self.receiving = False
            self.fail(exc.code)
        self.receiving = False
        if self.consumed and not self.closed:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.consumed)))
            self.recv_window += self.consumed
            self.consumed = 0
        self.flush()
        self.close_if_left()

    def frames(self) -> None:
        if not self.preface:
            if not take_preface(self.buf):
                return
            self.preface = True
        super().frames()

    def received(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == HEADERS and flags & WHOLE_BLOCK == END_HEADERS and sid & 1 and self.block is None:
            self.header_block(sid, flags, payload)  # a request's whole header block (headers() in short)
        else:
            self.frame(kind, flags, sid, payload)

    def on_rst_stream(self, sid: int, code: int) -> None:
        self.streams.pop(sid, None)

    def on_goaway(self, last_sid: int, code: int) -> None:
        self.leaving = True  # the client opens no more streams; those it opened are still answered

    def close_if_left(self) -> None:
        if self.leaving and not self.streams and not self.closed:
            self.closed = True
            self.close()

    def headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0 or sid % 2 == 0:
            raise Violation(PROTOCOL_ERROR)
        self.headers_payload(flags, sid, payload)

    def header_block(self, sid: int, flags: int, block: bytes) -> None:
        """A whole header block: a new request, or trailers ending one (decoded either way: HPACK is shared)."""
        try:
            req = self.blocks.decode(block)
        except BadHeaderBlock:
            raise Violation(COMPRESSION_ERROR) from None
        stream = self.streams.get(sid)
        if sid <= self.last_sid:
            if stream is None or stream.ended:
                raise Violation(STREAM_CLOSED)
            if not flags & END_STREAM:
                self.reset(sid, PROTOCOL_ERROR)  # headers after headers, not trailers
                return
            self.end_request(sid, stream)
            return
        self.last_sid = sid
        if len(self.streams) >= MAX_STREAMS:
            self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
            return
        if req is None:
            self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", PROTOCOL_ERROR)))
            return
        ended = bool(flags & END_STREAM)
        self.streams[sid] = Stream(WINDOW, self.peer.window, req, ended=ended)
        if ended:  # a GET: the request is whole
            self.on_request(sid, req[0], req[1], req[2], b"")

    def check_stream(self, sid: int) -> None:
        if sid == 0 or sid > self.last_sid:
            raise Violation(PROTOCOL_ERROR)

    def data(self, flags: int, sid: int, payload: bytes) -> None:
        start, end = self.data_payload(flags, sid, payload)
        size = len(payload)
        stream = self.streams.get(sid)
        if stream is None or stream.ended:
            self.reset(sid, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self.reset(sid, FLOW_CONTROL_ERROR)
            return
        body = stream.body = stream.body or bytearray()
        if len(body) <= WINDOW:  # more than a DNS message can be is not kept (413 says so)
            body += payload[start:end]
        if flags & END_STREAM:
            self.end_request(sid, stream)
        elif size:
            stream.recv_window += size
            self.out.append(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", size)))

    def end_request(self, sid: int, stream: Stream) -> None:
        stream.ended = True
        req = stream.request
        if req is not None:
            self.on_request(sid, req[0], req[1], req[2], b"" if stream.body is None else bytes(stream.body))

    def respond(self, sid: int, status: int, headers: Headers, body: bytes) -> None:
        """One stream's reply: HEADERS, then DATA as the windows allow. Ignored if the stream is gone."""
        stream = self.streams.get(sid)
        if stream is None or stream.answered or self.closed:
            return
        stream.answered = True
        block = self.heads.encode(status, headers)
        if self.peer.table_update:
            block, self.peer.table_update = self.peer.table_update + block, b""
        size = len(body)
        if 0 < size <= min(self.send_window, stream.send_window, self.peer.frame):
            self.send_window -= size  # the whole reply at once, as nearly every DNS answer goes
            self.out.append(HEADER.pack(len(block) << 8 | HEADERS, END_HEADERS, sid) + block
                            + HEADER.pack(size << 8 | DATA, END_STREAM, sid) + body)
            del self.streams[sid]
        else:  # the DATA that fits (the stream ends when all is sent), or HEADERS alone ending the stream
            self.out.append(frame(HEADERS, END_HEADERS if body else END_HEADERS | END_STREAM, sid, block))
            stream.unsent = body
            self.send_body(sid, stream)
        self.records.append(b"".join(self.out))
        self.out.clear()
        if not self.receiving:
            self.flush()
            self.close_if_left()

    def send_body(self, sid: int, stream: Stream) -> None:
        super().send_body(sid, stream)
        if not stream.unsent and stream.answered:
            del self.streams[sid]

    def reset(self, sid: int, code: int) -> None:
        self.streams.pop(sid, None)
        self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", code)))

    stream_error = reset

    def fail(self, code: int) -> None:
        """A connection error: GOAWAY naming the last stream we took, then close."""
        if self.closed:
            return
        self.out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, code)))
        self.flush()
        self.closed = True
        self.close()

    def flush(self) -> None:
        records = self.records
        if self.out:
            records.append(b"".join(self.out))
            self.out.clear()
        if records:
            self.records = []
            self.write(records)
