"""HTTP/2's vocabulary (RFC 9113) as heimdall/http2.py speaks it: frame types, flags, error
codes, settings, a frame's bytes, and what the client's SETTINGS say about what we send it."""

from __future__ import annotations

import struct

from heimdall.headerblock import MAX_HEADERS, hpack_int

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
WHOLE_BLOCK = END_HEADERS | PADDED | PRIORITY_FLAG  # of these, END_HEADERS alone: the payload is the block
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x5, 0x6
REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x9, 0xB
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
            self.table_update = hpack_int(value, 5, 0x20)  # our blocks use no table; say so in its size
        return 0
