"""HTTP/2 header blocks (RFC 7541) as a DoH server meets them: requests in, replies out.

Requests are decoded by the `hpack` library (Huffman codes and the dynamic
table are its business). A block that adds nothing to the decoder's table
(indexed fields and literals not indexed: what a client sends for its second
and later requests) means the same until a block that does, so its decoding
is remembered until then; telling which blocks those are takes a walk over
the fields' prefixes, not a decoding. Replies are a handful of fixed headers,
encoded as literals never indexed (with the static table's names), so the
client's table is never touched and the encoding of each distinct reply head
can be kept.
"""

from __future__ import annotations

from typing import Iterable

import hpack

MAX_HEADERS = 16384  # decoded header list size (our SETTINGS_MAX_HEADER_LIST_SIZE)
STATIC_NAMES = {b"content-type": 31, b"content-length": 28, b"cache-control": 24, b"allow": 22}
Headers = list[tuple[bytes, bytes]]
Request = tuple[bytes, bytes, "bytes | None"]  # (method, path, content-type)


class BadHeaderBlock(Exception):
    """The block cannot be decoded: the connection's HPACK state is lost (COMPRESSION_ERROR)."""


class HeaderBlocks:
    """hpack's decoder, and the requests of blocks that leave its table as it was."""

    def __init__(self) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADERS)
        self.known: dict[bytes, Request | None] = {}

    def decode(self, block: bytes) -> Request | None:
        """The request the block carries; None when it is not a request (no method or path)."""
        try:
            return self.known[block]
        except KeyError:
            pass
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise BadHeaderBlock(str(exc)) from None
        req = request_of(headers)
        if table_neutral(block):
            if len(self.known) < 256:
                self.known[block] = req
        else:
            self.known.clear()  # the table may have changed: what indices meant is gone
        return req


def request_of(headers: Iterable[tuple[bytes | str, bytes | str]]) -> Request | None:
    method = path = ctype = None
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b"content-type":
            ctype = value
    if method is None or not path:
        return None
    return as_bytes(method), as_bytes(path), None if ctype is None else as_bytes(ctype)


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()  # raw=True: always bytes already


def table_neutral(block: bytes) -> bool:
    """Decoding the block leaves the table as it was: its fields are all indexed (RFC 7541 6.1) or
    literals not indexed (6.2.2, 6.2.3), none added to the table (6.2.1) and no size update (6.3)."""
    i, n = 0, len(block)
    try:
        while i < n:
            byte = block[i]
            if byte & 0x80:
                i = skip_int(block, i, 7)
            elif byte & 0xE0:
                return False
            else:
                index = byte & 0x0F
                i = skip_int(block, i, 4)
                for _ in range(1 if index else 2):  # the name when not indexed, then the value
                    size, i = read_int(block, i, 7)
                    i += size
    except IndexError:
        return False
    return i == n


def read_int(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 5.1) at block[i]: (value, offset after it)."""
    top = (1 << prefix) - 1
    value = block[i] & top
    i += 1
    if value < top:
        return value, i
    shift = 0
    while True:
        byte = block[i]
        value += (byte & 0x7F) << shift
        i += 1
        shift += 7
        if not byte & 0x80:
            return value, i


def skip_int(block: bytes, i: int, prefix: int) -> int:
    return read_int(block, i, prefix)[1]


def hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with a `prefix`-bit prefix, `first` holding the other bits."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes([first | value])
    out, value = bytearray([first | top]), value - top
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(status: int, headers: Headers) -> bytes:
    """A reply's header block: :status and literals never indexed, so the client's table is never touched."""
    out = [b"\x88" if status == 200 else b"\x08" + hpack_int(3, 7) + str(status).encode()]
    for name, value in headers:
        index = STATIC_NAMES.get(name)
        out.append(hpack_int(index, 4) if index else b"\x00" + hpack_int(len(name), 7) + name)
        out.append(hpack_int(len(value), 7) + value)
    return b"".join(out)
