"""HTTP/2's vocabulary (RFC 9113) as heimdall/http2.py (the DoH listener) and
heimdall/http2client.py (the DoH upstream) speak it: frame types, flags, error codes,
settings, a frame's bytes, what the peer's SETTINGS say about what we send it, and what
both sides of a connection do alike (Http2Endpoint)."""

from __future__ import annotations

import struct
from typing import Any

from heimdall.headerblock import MAX_HEADERS

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
WHOLE_BLOCK = END_HEADERS | PADDED | PRIORITY_FLAG  # of these, END_HEADERS alone: the payload is the block
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x5, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
ERRORS = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
          "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
          "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")  # by code, 0x0-0xd
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = \
    range(1, 7)

MAX_STREAMS = 100  # streams open at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
MAX_BLOCK = 65536  # an encoded header block, HEADERS and CONTINUATIONs together
FRAME_SIZE = 16384  # the largest frame we accept (the protocol's default; we do not raise it)
WINDOW = 65535  # the receive windows we keep open (the protocol's default)
MAX_WINDOW = 2**31 - 1
HEADER = struct.Struct(">I B I")  # (length << 8 | type, flags, stream id): a frame's 9 bytes


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload) << 8 | kind, flags, sid) + payload


def error_name(code: int) -> str:
    return ERRORS[code] if code < len(ERRORS) else f"error {code:#x}"


OUR_SETTINGS = frame(SETTINGS, 0, 0, struct.pack(">HIHI", MAX_CONCURRENT_STREAMS, MAX_STREAMS,
                                                  MAX_HEADER_LIST_SIZE, MAX_HEADERS))
SETTINGS_ACK = frame(SETTINGS, ACK, 0)


class Violation(Exception):
    """The peer broke the protocol: GOAWAY with `code`, then close."""

    def __init__(self, code: int):
        self.code = code


def take_preface(buf: bytearray) -> bool:
    """True (and the preface taken off `buf`) once the client's preface and the head of its first
    SETTINGS are there; False while they may still come; a Violation when something else came."""
    if len(buf) < len(PREFACE) + 9:
        if not PREFACE.startswith(bytes(buf[:len(PREFACE)])):
            raise Violation(PROTOCOL_ERROR)
        return False
    if buf[:len(PREFACE)] != PREFACE or buf[len(PREFACE) + 3] != SETTINGS:
        raise Violation(PROTOCOL_ERROR)
    del buf[:len(PREFACE)]
    return True


class PeerSettings:
    """What the client's SETTINGS (RFC 9113 6.5.2) say about what we send it."""

    def __init__(self) -> None:
        self.window = WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE: each new stream's window for our DATA
        self.frame = FRAME_SIZE  # SETTINGS_MAX_FRAME_SIZE
        self.table_update = b""  # a dynamic table size update our next header block must start with

    def take(self, key: int, value: int) -> int:
        """One setting; returns how much every open stream's window changed (INITIAL_WINDOW_SIZE)."""
        if key == INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise Violation(FLOW_CONTROL_ERROR)
            delta, self.window = value - self.window, value
            return delta
        if key == MAX_FRAME_SIZE:
            if not FRAME_SIZE <= value <= 2**24 - 1:
                raise Violation(PROTOCOL_ERROR)
            self.frame = value
        elif key == ENABLE_PUSH and value > 1:
            raise Violation(PROTOCOL_ERROR)
        elif key == HEADER_TABLE_SIZE and value < 4096:
            self.table_update = b"\x20"  # our blocks use no table: size 0 answers any smaller size
        return 0


class Http2Endpoint:
    """What both sides of a connection do alike: a header block from HEADERS and CONTINUATIONs,
    DATA's share of the connection's window, PING, SETTINGS, WINDOW_UPDATE. Each side has its
    `streams` (each with `send_window` and `unsent`), says which stream IDs are known
    (`check_stream`), what a stream error does (`stream_error`) and how a body is sent (`send_body`)."""

    block: bytearray | None = None  # a header block waiting for its CONTINUATIONs
    block_sid = block_flags = 0

    def __init__(self) -> None:
        self.buf = bytearray()  # bytes received and not yet taken as whole frames
        self.closed = False
        self.streams: dict[int, Any] = {}
        self.out: list[bytes] = []  # frames to send
        self.peer = PeerSettings()
        self.send_window = WINDOW  # the connection's, for our DATA
        self.recv_window = WINDOW  # the connection's, for the peer's DATA
        self.consumed = 0  # DATA bytes received and not yet given back (WINDOW_UPDATE)

    def header_block(self, sid: int, flags: int, block: bytes) -> None:
        raise NotImplementedError

    def check_stream(self, sid: int) -> None:
        raise NotImplementedError

    def stream_error(self, sid: int, code: int) -> None:
        raise NotImplementedError

    def send_body(self, sid: int, stream: Any) -> None:
        """As much of the stream's body as the windows allow; the rest waits for a WINDOW_UPDATE."""
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

    def on_rst_stream(self, sid: int, code: int) -> None:
        raise NotImplementedError

    def on_goaway(self, last_sid: int, code: int) -> None:
        raise NotImplementedError

    def setting(self, key: int, value: int) -> None:
        """Hook: one of the peer's settings, before PeerSettings takes it."""

    def frames(self) -> None:
        """Each whole frame in `buf` to `received`; a frame's last bytes may come in a later read."""
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
            self.received(kind, flags, sid, payload)
        del buf[:pos]

    def received(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        """Hook: one frame, before `frame` acts on it."""
        self.frame(kind, flags, sid, payload)

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
            self.ping(flags, sid, payload)
        elif kind == RST_STREAM:
            self.check_stream(sid)
            if len(payload) != 4:
                raise Violation(FRAME_SIZE_ERROR)
            self.on_rst_stream(sid, struct.unpack(">I", payload)[0])
        elif kind == PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise Violation(PROTOCOL_ERROR if sid == 0 else FRAME_SIZE_ERROR)
        elif kind == GOAWAY:
            if sid:
                raise Violation(PROTOCOL_ERROR)
            if len(payload) < 8:
                raise Violation(FRAME_SIZE_ERROR)
            last_sid, code = struct.unpack_from(">II", payload)
            self.on_goaway(last_sid & MAX_WINDOW, code)
        elif kind == PUSH_PROMISE:
            raise Violation(PROTOCOL_ERROR)  # a client never pushes, and our clients say SETTINGS_ENABLE_PUSH 0

    def headers(self, flags: int, sid: int, payload: bytes) -> None:
        raise NotImplementedError

    def data(self, flags: int, sid: int, payload: bytes) -> None:
        raise NotImplementedError

    def headers_payload(self, flags: int, sid: int, payload: bytes) -> None:
        """A HEADERS frame's block fragment, without padding and priority."""
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

    def data_payload(self, flags: int, sid: int, payload: bytes) -> tuple[int, int]:
        """Where a DATA frame's data lies in its payload, the whole payload counted against the
        connection's window (padding too)."""
        self.check_stream(sid)
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise Violation(FLOW_CONTROL_ERROR)
        self.consumed += size
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise Violation(PROTOCOL_ERROR)
            return 1, size - payload[0]
        return 0, size

    def ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid or len(payload) != 8:
            raise Violation(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR)
        if not flags & ACK:
            self.out.append(frame(PING, ACK, 0, payload))

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
            self.setting(key, value)
            delta = self.peer.take(key, value)
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise Violation(FLOW_CONTROL_ERROR)
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
        stream = self.streams.get(sid)
        if stream is None:
            return  # a stream that ended here: the peer may not have seen it end yet
        if increment == 0:
            self.stream_error(sid, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self.stream_error(sid, FLOW_CONTROL_ERROR)
            return
        self.send_body(sid, stream)

    def send_waiting(self) -> None:
        for sid, stream in list(self.streams.items()):
            if stream.unsent:
                self.send_body(sid, stream)
