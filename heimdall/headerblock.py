"""HTTP/2 header blocks (RFC 7541) as DoH meets them: requests in, replies out, and for the
DoH upstream client the other way round.

Requests are decoded by the `hpack` library (Huffman codes and the dynamic
table are its business). A block that adds nothing to the decoder's table
(indexed fields and literals not indexed: what a client sends for its second
and later requests) means the same until a block that does, so its decoding
is remembered until then, and so is each of its fields (a GET's block differs
from the last one in its :path alone, so the bytes around its :path are kept as a
template, and a block that is the template around another :path is decoded by
reading that one field). Telling which blocks those are takes a walk over the
fields' prefixes, not a decoding. Replies are a handful of fixed headers,
encoded as literals never indexed (with the static table's names), so the
client's table is never touched and the encoding of each distinct reply head
can be kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import hpack
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from heimdall.wire import c_ext

huffman_decode = getattr(c_ext, "huffman_decode", decode_huffman)  # heimdall/hpack.c, or hpack's twin

MAX_HEADERS = 16384  # decoded header list size (our SETTINGS_MAX_HEADER_LIST_SIZE)
DNS_MESSAGE = b"application/dns-message"
STATIC_NAMES = {b"content-type": 31, b"content-length": 28, b"cache-control": 24, b"allow": 22}
Headers = Sequence[tuple[bytes, bytes]]
Request = tuple[bytes, bytes, "bytes | None"]  # (method, path, content-type)
STATIC_TABLE = HeaderTable.STATIC_TABLE  # (name, value) of indices 1-61
PATH_LITERALS = (0x04, 0x14)  # a literal :path (static index 4) not indexed, never indexed: first bytes


class BadHeaderBlock(Exception):
    """The block cannot be decoded: the connection's HPACK state is lost (COMPRESSION_ERROR)."""


class HeaderBlocks:
    """hpack's decoder, and what the blocks and fields that leave its table as it was decode to."""

    KEEP = 512  # remembered blocks, and fields; past that the memory starts over
    SHORT = 32  # longer fields are not remembered: a GET's :path, new with every query

    def __init__(self) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADERS)
        self.blocks: dict[bytes, Request | None] = {}
        self.fields: dict[bytes, tuple[bytes, bytes]] = {}
        self.template: Template | None = None
        self.misses = 0  # fields decoded rather than remembered

    def decode(self, block: bytes) -> Request | None:
        """The request the block carries; None when it is not a request (no method or path)."""
        template = self.template
        if template is not None and block.startswith(template.prefix) and block.endswith(template.suffix):
            path = path_literal(block[len(template.prefix):len(block) - len(template.suffix)])
            if path is not None:
                return template.request(path)
        if block in self.blocks:
            return self.blocks[block]
        fields = neutral_fields(block)
        try:
            if fields is None:
                self.blocks.clear()  # the table changes: what its indices meant is gone
                self.fields.clear()
                self.template = None
                return request_of(self.decoder.decode(block, raw=True))
            misses = self.misses
            headers = [self.field(f) for f in fields]
        except hpack.HPACKError as exc:
            raise BadHeaderBlock(str(exc)) from None
        if header_list_size(headers) > MAX_HEADERS:
            raise BadHeaderBlock("header list too large")
        req = request_of(headers)
        if self.misses == misses:  # made of fields seen before: likely to come again (a GET's :path is not)
            remember(self.blocks, block, req)
        self.template = Template.around_path(fields, headers) or self.template
        return req

    def field(self, data: bytes) -> tuple[bytes, bytes]:
        """One field of a block that leaves the table alone: decoded alone, as it means the same."""
        header = self.fields.get(data)
        if header is None:
            header = static_literal(data)
            if header is None:
                (name, value), = self.decoder.decode(data, raw=True)
                header = (as_bytes(name), as_bytes(value))
            self.misses += 1
            if len(data) <= self.SHORT:
                remember(self.fields, data, header)
        return header


@dataclass(frozen=True, slots=True)
class Template:
    """The fields of a block around its one literal :path, and what they decode to."""

    prefix: bytes
    suffix: bytes
    method: bytes | None
    content_type: bytes | None
    size: int  # the decoded size of the fields around the :path (RFC 7541 4.1)

    @classmethod
    def around_path(cls, fields: list[bytes], headers: list[tuple[bytes, bytes]]) -> Template | None:
        """The template of a block with one :path, a literal with the static name; None for any other."""
        at = [i for i, f in enumerate(fields) if f[0] in PATH_LITERALS]
        if len(at) != 1:
            return None
        i = at[0]
        others = headers[:i] + headers[i + 1:]
        if any(name == b":path" for name, _ in others):  # another :path (indexed): it would count too
            return None
        method = ctype = None
        for name, value in others:
            if name == b":method":
                method = value
            elif name == b"content-type":
                ctype = value
        return cls(b"".join(fields[:i]), b"".join(fields[i + 1:]), method, ctype, header_list_size(others))

    def request(self, path: bytes) -> Request | None:
        """What the block made of this template around a :path with this value decodes to."""
        if self.size + len(path) + 37 > MAX_HEADERS:  # 37: len(":path") and the field's 32
            raise BadHeaderBlock("header list too large")
        if self.method is None or not path:
            return None
        return self.method, path, self.content_type


def path_literal(field: bytes) -> bytes | None:
    """The value when `field` is exactly one literal :path (static name, not indexed); None otherwise."""
    if len(field) < 2 or field[0] not in PATH_LITERALS:
        return None
    try:
        literal = static_literal(field)
    except (hpack.HPACKDecodingError, IndexError):
        return None
    return None if literal is None else literal[1]


def header_list_size(headers: Headers) -> int:
    return sum(len(name) + len(value) + 32 for name, value in headers)


def static_literal(field: bytes) -> tuple[bytes, bytes] | None:
    """A literal not indexed (RFC 7541 6.2.2, 6.2.3) whose name is the static table's, decoded
    here: a GET's :path, new with every request. None for any other field (hpack decodes it)."""
    index = field[0] & 0x0F
    if field[0] & 0xE0 or not 0 < index < 15 or len(field) < 2:  # 15: the index goes on past the prefix
        return None
    name = STATIC_TABLE[index - 1][0]
    size, start = field[1] & 0x7F, 2  # the value's length, in one byte as a GET's :path has it
    if size == 0x7F:
        size, start = read_int(field, 1, 7)
    if start + size != len(field):
        raise hpack.HPACKDecodingError("a field's value is not the rest of the field")
    value = field[start:]
    if field[1] & 0x80:
        try:
            value = huffman_decode(value)
        except (ValueError, hpack.HPACKDecodingError) as exc:
            raise hpack.HPACKDecodingError(str(exc)) from None
    return name, value


def remember(memory: dict, key: bytes, value: object) -> None:
    if len(memory) >= HeaderBlocks.KEEP:
        memory.clear()
    memory[key] = value


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


def py_neutral_fields(block: bytes) -> list[bytes] | None:
    """The block's fields when decoding it leaves the table as it was: all indexed (RFC 7541 6.1)
    or literals not indexed (6.2.2, 6.2.3). None when one adds to the table (6.2.1) or resizes it
    (6.3), or the block ends inside a field (hpack's decoder says what is wrong with it)."""
    fields, i, n = [], 0, len(block)
    try:
        while i < n:
            start, byte = i, block[i]
            if byte & 0x80:
                i = skip_int(block, i, 7)
            elif byte & 0xE0:
                return None
            else:
                index = byte & 0x0F
                i = skip_int(block, i, 4)
                for _ in range(1 if index else 2):  # the name when not indexed, then the value
                    size, i = read_int(block, i, 7)
                    i += size
            fields.append(block[start:i])
    except IndexError:
        return None
    return fields if i == n else None


neutral_fields = getattr(c_ext, "neutral_fields", py_neutral_fields)  # heimdall/hpack.c, or its twin


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


class ReplyHeads:
    """Encoded reply heads, kept: a DoH server sends the same few again and again."""

    KEEP = 256

    def __init__(self) -> None:
        self.encoded: dict[tuple[int, tuple[tuple[bytes, bytes], ...]], bytes] = {}

    def encode(self, status: int, headers: Headers) -> bytes:
        key = (status, tuple(headers))
        block = self.encoded.get(key)
        if block is None:
            if len(self.encoded) >= self.KEEP:
                self.encoded.clear()
            block = self.encoded[key] = encode_headers(status, headers)
        return block


def encode_headers(status: int, headers: Headers) -> bytes:
    """A reply's header block: :status and literals never indexed, so the client's table is never touched."""
    out = [b"\x88" if status == 200 else b"\x08" + hpack_int(3, 7) + str(status).encode()]
    for name, value in headers:
        index = STATIC_NAMES.get(name)
        out.append(hpack_int(index, 4) if index else b"\x00" + hpack_int(len(name), 7) + name)
        out.append(hpack_int(len(value), 7) + value)
    return b"".join(out)


class RequestHead:
    """A DoH POST's header block: fixed but for its content-length, and touching no table."""

    def __init__(self, authority: bytes, path: bytes) -> None:
        def literal(index: int, value: bytes) -> bytes:  # not indexed, the static table's name
            return hpack_int(index, 4) + hpack_int(len(value), 7) + value
        self.prefix = (b"\x83\x87" + literal(1, authority) + literal(4, path)  # :method POST, :scheme https
                       + literal(31, DNS_MESSAGE) + literal(19, DNS_MESSAGE)  # content-type, accept
                       + hpack_int(28, 4))  # content-length, its value to follow

    def encode(self, length: int) -> bytes:
        value = str(length).encode()
        return self.prefix + bytes([len(value)]) + value


class ReplyHeadBlocks:
    """A DoH server's reply heads as (:status, content-type). A block that leaves the table alone
    (what a server sends once its table holds its reply headers) means the same until one that
    does not, so what it decodes to is remembered until then."""

    def __init__(self, max_size: int) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=max_size)
        self.known: dict[bytes, tuple[bytes, bytes]] = {}

    def decode(self, block: bytes) -> tuple[bytes, bytes]:
        head = self.known.get(block)
        if head is not None:
            return head
        try:
            fields = self.decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise BadHeaderBlock(str(exc)) from None
        status = ctype = b""
        for name, value in fields:
            if name == b":status":
                status = as_bytes(value)
            elif name == b"content-type":
                ctype = as_bytes(value)
        if neutral_fields(block) is None:
            self.known.clear()  # the table changed: what its indices meant is gone
        else:
            remember(self.known, block, (status, ctype))
        return status, ctype
