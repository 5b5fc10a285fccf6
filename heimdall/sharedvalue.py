"""The shared tier's value format and TTL aging: pure functions, no Redis import.

Value (version 1)::

    b"HMDL" | u8 version | f64 stored-at (unix time) | u32 ttl | DNS wire answer

Stored-at is wall-clock time because the reader may be another instance (or
machine) than the writer.  Kept apart from the client (sharedcache.py) so the
server can age TTLs without importing redis.
"""

from __future__ import annotations

import struct

MAGIC = b"HMDL"
VERSION = 1
_HEADER = struct.Struct("!4sBdI")  # magic, version, stored-at, ttl
HEADER_SIZE = _HEADER.size
_U32 = struct.Struct("!I")
_OPT = 41


class GarbageValue(ValueError):
    """A value under a Heimdall key that is not a value this code wrote."""


def _skip_name(wire: bytes, pos: int) -> int:
    """Offset just past the name field at `pos`, after checking the whole name.

    Compression pointers are followed and must point strictly backwards (so
    the walk ends) into the message body; labels total at most 255 bytes.
    """
    end = len(wire)
    field_end = -1
    total = 0
    while True:
        if pos >= end:
            raise GarbageValue("name runs past the end")
        length = wire[pos]
        if length == 0:
            return field_end if field_end >= 0 else pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > end:
                raise GarbageValue("truncated compression pointer")
            target = ((length & 0x3F) << 8) | wire[pos + 1]
            if not 12 <= target < pos:
                raise GarbageValue("compression pointer not backwards")
            if field_end < 0:
                field_end = pos + 2
            pos = target
            continue
        if length & 0xC0:
            raise GarbageValue("unknown label type")
        total += length + 1
        if total > 255:
            raise GarbageValue("name longer than 255 bytes")
        pos += 1 + length


def ttl_offsets(wire: bytes) -> list[int]:
    """Offsets of the TTL fields of every record except OPT, in wire order.

    Walks the whole message and raises GarbageValue unless the header counts
    match the records, every owner name is well formed and the last record
    ends exactly at the end.  Pure Python, a few microseconds: cheaper than a
    full dnspython parse (~100-200 us) on the Redis-hit path.  Rdata is not
    interpreted.
    """
    if len(wire) < 12:
        raise GarbageValue("shorter than a DNS header")
    qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", wire, 4)
    end = len(wire)
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(wire, pos) + 4
        if pos > end:
            raise GarbageValue("truncated question")
    offsets: list[int] = []
    for _ in range(ancount + nscount + arcount):
        pos = _skip_name(wire, pos)
        if pos + 10 > end:
            raise GarbageValue("truncated record header")
        rtype, _rclass, _ttl, rdlength = struct.unpack_from("!HHIH", wire, pos)
        if rtype != _OPT:
            offsets.append(pos + 4)
        pos += 10 + rdlength
        if pos > end:
            raise GarbageValue("truncated rdata")
    if pos != end:
        raise GarbageValue("trailing bytes after the last record")
    return offsets


def age_ttls(wire: bytes, seconds: float, offsets: list[int] | None = None) -> bytes:
    """`wire` with every TTL (except OPT's) lowered by whole `seconds`, floored at 0."""
    if offsets is None:
        offsets = ttl_offsets(wire)
    drop = int(seconds)
    if drop <= 0 or not offsets:
        return wire
    out = bytearray(wire)
    for off in offsets:
        ttl = _U32.unpack_from(out, off)[0]
        _U32.pack_into(out, off, ttl - drop if ttl > drop else 0)
    return bytes(out)


def encode_value(wire: bytes, ttl: int, stored_at: float) -> bytes:
    """The Redis value for `wire`: versioned header, then the answer as is."""
    return _HEADER.pack(MAGIC, VERSION, stored_at, ttl) + wire


def decode_value(value: bytes) -> tuple[bytes, float, int]:
    """(wire, stored_at, ttl) from a Redis value, or raise GarbageValue."""
    if len(value) < HEADER_SIZE:
        raise GarbageValue("shorter than the header")
    magic, version, stored_at, ttl = _HEADER.unpack_from(value)
    if magic != MAGIC or version != VERSION:
        raise GarbageValue("wrong magic or version")
    if stored_at != stored_at or ttl <= 0:  # NaN, or a TTL we never store
        raise GarbageValue("bad stored-at or ttl")
    wire = value[HEADER_SIZE:]
    ttl_offsets(wire)
    if not wire[2] & 0x80:
        raise GarbageValue("not a response (QR clear)")
    return wire, stored_at, ttl
