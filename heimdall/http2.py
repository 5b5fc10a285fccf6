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
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER,
    HEADERS,
    MAX_BLOCK,
    MAX_STREAMS,
    MAX_WINDOW,
    OUR_SETTINGS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ACK,
    STREAM_CLOSED,
    WHOLE_BLOCK,
    WINDOW,
    WINDOW_UPDATE,
    PeerSettings,
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


class Http2Connection:
    """One connection's frames: requests go to `on_request`, replies come back through `respond`."""

    def __init__(self, on_request: OnRequest, write: Callable[[list[bytes]], None], close: Callable[[], None]):
        self.on_request, self.write, self.close = on_request, write, close
        self.buf = bytearray()
        self.preface = False  # the client's preface and first SETTINGS have arrived
        self.closed = False
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0  # the highest stream the client opened
        self.blocks = HeaderBlocks()
        self.block: bytearray | None = None  # a header block waiting for its CONTINUATIONs
        self.block_sid = self.block_flags = 0
        self.send_window = WINDOW  # the connection's, for our DATA
        self.recv_window = WINDOW
        self.consumed = 0  # DATA bytes received and not yet given back (WINDOW_UPDATE)
        self.peer = PeerSettings()
        self.heads = ReplyHeads()
        self.out: list[bytes] = [OUR_SETTINGS]  # frames of the record being made
        self.records: list[bytes] = []  # whole records not yet written
        self.receiving = False

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

    def frames(self) -> None:
        buf = self.buf
        if not self.preface:
            if not take_preface(buf):
                return
            self.preface = True
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
            if kind == HEADERS and flags & WHOLE_BLOCK == END_HEADERS and sid & 1 and self.block is None:
                self.header_block(sid, flags, payload)  # a request's whole header block (headers() in short)
            else:
                self.frame(kind, flags, sid, payload)
        del buf[:pos]

    def frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.block is not None and kind != CONTINUATION:
            raise Violation(PROTOCOL_ERROR)  # a header block must not be interrupted
        if kind == HEADERS:
            self.headers(flags, sid, payload)
        elif kind == DATA:
            self.data(flags, sid, payload)
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
            self.check_stream_frame(sid, payload, 4)
            self.streams.pop(sid, None)
        elif kind == PRIORITY:
            self.check_stream_frame(sid, payload, 5, idle_ok=True)
        elif kind == GOAWAY:
            if sid:
                raise Violation(PROTOCOL_ERROR)
            self.closed = True  # the client is leaving: as h2 did, close now
            self.close()
        elif kind == PUSH_PROMISE:
            raise Violation(PROTOCOL_ERROR)  # a client never pushes

    def check_stream_frame(self, sid: int, payload: bytes, size: int, idle_ok: bool = False) -> None:
        if sid == 0 or (sid > self.last_sid and not idle_ok):
            raise Violation(PROTOCOL_ERROR)
        if len(payload) != size:
            raise Violation(FRAME_SIZE_ERROR)

    def headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0 or sid % 2 == 0:
            raise Violation(PROTOCOL_ERROR)
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

    def data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0 or sid > self.last_sid:
            raise Violation(PROTOCOL_ERROR)
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
            delta = self.peer.take(key, value)
            for stream in self.streams.values():
                stream.send_window += delta
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
        if sid > self.last_sid:
            raise Violation(PROTOCOL_ERROR)
        stream = self.streams.get(sid)
        if stream is None:
            return  # a stream we finished: the client may not have seen it end yet
        if increment == 0:
            self.reset(sid, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self.reset(sid, FLOW_CONTROL_ERROR)
            return
        self.send_body(sid, stream)

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

    def send_body(self, sid: int, stream: Stream) -> None:
        """As much of the stream's reply as the windows allow; the rest waits for a WINDOW_UPDATE."""
        data = stream.unsent
        while data:
            room = min(self.send_window, stream.send_window, self.peer.frame)
            if room <= 0:
                break
            chunk, data = data[:room], data[room:]
            self.send_window -= len(chunk)
            stream.send_window -= len(chunk)
            self.out.append(frame(DATA, 0 if data else END_STREAM, sid, chunk))
        stream.unsent = data
        if not data and stream.answered:
            del self.streams[sid]

    def send_waiting(self) -> None:
        for sid, stream in list(self.streams.items()):
            if stream.unsent:
                self.send_body(sid, stream)

    def reset(self, sid: int, code: int) -> None:
        self.streams.pop(sid, None)
        self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", code)))

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
