"""The cache key: its layout, and everything that reads a name or a query back out of it.

For UDP the key is laid out so that a canonical query's bytes from offset 2,
lower-cased, *are* the key: both hot paths (heimdall/_hotpath.c and
heimdall/hotpath.py) compute `data[2:].lower()` and do one dict lookup.

    [T|X] flags(2: RD, AD|CD)  counts(8: 1 question, 0/1 additional)  qname  qtype qclass  [OPT]

That is only unambiguous when no byte outside the name is one that lower()
changes or produces (e.g. qtype 65 = 'A'); such keys get an 'X' prefix, which
the hot path can never produce (byte 2 of a query is 0 or 1 here), so they are
only found through `cache_key`. TCP keys get 'T': a TCP answer may be larger
than any UDP variant. With client groups, a name whose answer differs between
groups is cached per group under 'G' + the group's number + the key
(`group_key`), which the hot path cannot produce either: those queries always
reach the pipeline, which knows the client. The shared (Redis) tier keys on what changes the
upstream's answer only, since every worker builds its own variants from it.
"""

from __future__ import annotations

from typing import Callable

from heimdall import wire
from heimdall.wire import HEADER_LEN, Query

PREFIXES = (b"T", b"X")
_c_cache_key: Callable[[bytes, int, bool, int, bool, bool], bytes] | None = getattr(wire.c_ext, "cache_key", None)


def cache_key(msg: bytes, q: Query, tcp: bool) -> bytes:
    """Flags that change the answer + lower-cased question + EDNS size class."""
    if _c_cache_key is not None:  # heimdall/_hotpath.c: the same bytes, one allocation
        return _c_cache_key(msg, q.qend, q.edns, q.udp_size, q.do, tcp)
    return py_cache_key(msg, q, tcp)


def py_cache_key(msg: bytes, q: Query, tcp: bool) -> bytes:
    """cache_key in Python: without the C extension, and the reference the C one is tested against."""
    flags = bytes((msg[2] & wire.RD, msg[3] & (wire.AD | wire.CD)))
    name = msg[HEADER_LEN:q.qend - 4].lower()
    typeclass = msg[q.qend - 4:q.qend]
    if q.edns:
        tail = typeclass + wire.OPTS[wire.size_class(q), q.do]
        key = flags + wire.EDNS_COUNTS + name + tail
    else:
        tail = typeclass
        key = flags + wire.PLAIN_COUNTS + name + tail
    if tcp:
        return b"T" + key
    outside = flags + tail
    if outside.lower() != outside or outside.upper() != outside:  # a letter outside the name
        return b"X" + key
    return key


def group_key(key: bytes, group: int) -> bytes:
    """The key of one client group's own answer (group 1..255; 0, the default group, uses `key`)."""
    return b"G" + bytes((group,)) + key


def ungrouped(key: bytes) -> bytes:
    return key[2:] if key[:1] == b"G" else key


def query_for_key(key: bytes) -> bytes:
    """A client query (ID 0) whose cache key is `key`: the UDP key is the query from byte 2 on."""
    key = ungrouped(key)
    return b"\x00\x00" + (key[1:] if key[:1] in PREFIXES else key)


def qname(key: bytes) -> bytes:
    """The lower-cased wire qname in a key; b"" for a key that is not one of ours."""
    key = ungrouped(key)
    start = HEADER_LEN - 1 if key[:1] in PREFIXES else HEADER_LEN - 2
    i = start
    try:
        while key[i]:
            i += key[i] + 1
    except IndexError:
        return b""
    return key[start:i + 1]


def shared_key(question: bytes, msg: bytes, q: Query) -> bytes:
    """The shared tier's key: the lower-cased question and the bits that change the upstream's answer."""
    rd, cd = bool(msg[2] & wire.RD), bool(msg[3] & wire.CD)
    return question + bytes((rd | cd << 1 | q.do << 2,))
