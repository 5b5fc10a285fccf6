"""Hand-written DNS wire helpers for the hot path and the miss path.

dnspython is correct but slow (tens of microseconds per message); a cache hit
must cost a few, so these helpers work on raw bytes: header sanity, question
parsing, TTL offset discovery, TTL aging and error replies.
Everything here raises `WireError` (never anything else) on malformed input.
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Mapping, TypeVar

HEADER_LEN = 12
# byte 2 of the header
QR = 0x80
OPCODE_MASK = 0x78
AA = 0x04
TC = 0x02
RD = 0x01
# byte 3 of the header
RA = 0x80
AD = 0x20
CD = 0x10
RCODE_MASK = 0x0F

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
TYPE_CNAME, TYPE_SOA, TYPE_OPT, TYPE_IXFR, TYPE_AXFR = 5, 6, 41, 251, 252
DO_BIT = 0x8000
OUR_UDP_SIZE = 1232  # DNS flag day 2020: no fragmentation
STALE_TTL = 30  # RFC 8767 recommends 30 s for stale answers

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U16_U16 = struct.Struct("!HH")
_COUNTS = struct.Struct("!HHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"


T = TypeVar("T")


class WireError(ValueError):
    """The message is malformed (the server answers FORMERR or drops it)."""


c_ext: ModuleType | None  # heimdall/_hotpath.c (its wire walks and helpers), or None when not built
try:  # built by `pip install`; optional
    c_ext = importlib.import_module("heimdall._hotpath")
except ImportError:  # pragma: no cover - no compiler at install time
    c_ext = None
_c_parse_query: Callable[[bytes], tuple] | None = getattr(c_ext, "parse_query", None)
_c_scan_response: Callable[[bytes, bool], tuple] | None = getattr(c_ext, "scan_response", None)
_c_reply_matches: Callable[[bytes, int, bytes, bool], bool] | None = getattr(c_ext, "reply_matches", None)


@dataclass(slots=True)
class Query:
    """What the server needs to know about a client query beyond its bytes."""

    qend: int  # offset just past the question (name, type, class)
    qtype: int
    qclass: int
    edns: bool = False
    udp_size: int = 512
    do: bool = False
    edns_version: int = 0


def question_end(msg: bytes, off: int = HEADER_LEN) -> int:
    """Offset past an uncompressed question name + type + class, validated."""
    n = len(msg)
    total = 0
    while True:
        if off >= n:
            raise WireError("question runs past the end of the message")
        length = msg[off]
        if length == 0:
            off += 1
            break
        if length > 63:
            raise WireError("compressed or invalid label in the question")
        total += length + 1
        if total > 254:
            raise WireError("question name longer than 255 bytes")
        off += length + 1
    if off + 4 > n:
        raise WireError("question type/class missing")
    return off + 4


def name_end(msg: bytes, off: int) -> int:
    """Offset past a (possibly compressed) name starting at off."""
    n = len(msg)
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        length = msg[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            if off + 2 > n:
                raise WireError("truncated compression pointer")
            return off + 2
        if length & 0xC0:
            raise WireError("unknown label type")
        off += length + 1


def read_name(msg: bytes, off: int) -> bytes:
    """The name at off, decompressed, in lower-case wire form (its labels and the root's zero byte).

    Every pointer must point backwards (RFC 1035 compression only refers to
    earlier names), which also rules out loops.
    """
    out, n, floor = bytearray(), len(msg), off
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        length = msg[off]
        if length == 0:
            out.append(0)
            return bytes(out).lower()
        if length & 0xC0 == 0xC0:
            if off + 2 > n:
                raise WireError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | msg[off + 1]
            if target >= floor:
                raise WireError("compression pointer does not point backwards")
            off = floor = target
            continue
        if length & 0xC0:
            raise WireError("unknown label type")
        out += msg[off:off + length + 1]
        if len(out) > 255:
            raise WireError("name longer than 255 octets")
        off += length + 1


# A CNAME record's type and class (IN) as they follow its owner name: where these four bytes
# do not occur, no CNAME record does (they may occur elsewhere: then a walk decides).
CNAME_IN = b"\x00\x05\x00\x01"


def longest_suffix(table: Mapping[bytes, T], name: bytes) -> T | None:
    """The value of the longest of a wire name and the names it is under (the root left out) that
    `table` holds: the zone a name is in, the forwarding rule that applies to it."""
    i = 0
    while name[i]:
        value = table.get(name[i:])
        if value is not None:
            return value
        i += name[i] + 1
    return None


def cname_targets(msg: bytes) -> list[bytes]:
    """The targets of the CNAME records in a response's answer section (lower-case wire names)."""
    an = _COUNTS.unpack_from(msg, 4)[1]
    off, targets = question_end(msg), []
    for _ in range(an):
        end, fixed, rtype = rr_end(msg, off)
        if rtype == TYPE_CNAME:
            targets.append(read_name(msg, fixed + 10))
        off = end
    return targets


def rr_end(msg: bytes, off: int) -> tuple[int, int, int]:
    """(end of this RR, offset of its fixed part, its type)."""
    fixed = name_end(msg, off)
    if fixed + 10 > len(msg):
        raise WireError("resource record header truncated")
    rtype, _cls, _ttl, rdlen = _RR_FIXED.unpack_from(msg, fixed)
    end = fixed + 10 + rdlen
    if end > len(msg):
        raise WireError("resource record data truncated")
    return end, fixed, rtype


def parse_query(msg: bytes) -> Query:
    """Validate a client query (header already known to be 12+ bytes, QR=0)."""
    if _c_parse_query is not None:  # heimdall/_hotpath.c: the same walk, ~1/5 of the instructions
        try:
            return Query(*_c_parse_query(msg))
        except ValueError as exc:
            raise WireError(str(exc)) from None
    return py_parse_query(msg)


def py_parse_query(msg: bytes) -> Query:
    """parse_query in Python: without the C extension, and the reference the C walk is tested against."""
    qd, an, ns, ar = _COUNTS.unpack_from(msg, 4)
    if qd != 1:
        raise WireError("query must carry exactly one question")
    qend = question_end(msg)
    qtype, qclass = _U16.unpack_from(msg, qend - 4)[0], _U16.unpack_from(msg, qend - 2)[0]
    q = Query(qend, qtype, qclass)
    off = qend
    for _ in range(an + ns):
        off = rr_end(msg, off)[0]
    for _ in range(ar):
        start = off
        off, fixed, rtype = rr_end(msg, off)
        if rtype == TYPE_OPT:
            if q.edns or fixed != start + 1:
                raise WireError("more than one OPT record, or OPT with a non-root name")
            size, ttl = _U16.unpack_from(msg, fixed + 2)[0], _U32.unpack_from(msg, fixed + 4)[0]
            q.edns = True
            q.udp_size = max(512, size)
            q.edns_version = (ttl >> 16) & 0xFF
            q.do = bool(ttl & DO_BIT)
    if off != len(msg):
        raise WireError("trailing bytes after the last record")
    return q


def size_class(q: Query) -> int:
    """The UDP size we promise to stay within: a lower bound of what the client allows."""
    if not q.edns:
        return 512
    return OUR_UDP_SIZE if q.udp_size >= OUR_UDP_SIZE else 512


def opt_record(size: int, do: bool, ext_rcode: int = 0) -> bytes:
    """An OPT RR (root name) with no options."""
    return b"\x00\x00\x29" + _U16.pack(size) + bytes((ext_rcode, 0, 0x80 if do else 0, 0)) + b"\x00\x00"


# Every OPT record we write (our size or 512, DO or not): made once, put in every miss's query and entry.
OPTS: dict[tuple[int, bool], bytes] = {(size, do): opt_record(size, do) for size in (512, OUR_UDP_SIZE)
                                       for do in (False, True)}


def error_reply(msg: bytes, rcode: int, qend: int | None = None, edns: bool = False) -> bytes:
    """A bare reply with the client's ID, opcode and RD, the question if known."""
    b2 = QR | (msg[2] & (OPCODE_MASK | RD))
    ext = 0
    if rcode > 15:
        ext, rcode = rcode >> 4, rcode & 0xF
    head = msg[:2] + bytes((b2, RA | rcode))
    question = msg[HEADER_LEN:qend] if qend else b""
    opt = opt_record(OUR_UDP_SIZE, False, ext) if edns else b""
    counts = _COUNTS.pack(1 if qend else 0, 0, 0, 1 if edns else 0)
    return head + counts + question + opt


@dataclass(slots=True)
class ResponseScan:
    """Where things are in an upstream response (offsets into the message)."""

    rcode: int
    qend: int
    ancount: int
    nscount: int
    arcount: int
    ttl_offsets: list[int]  # every RR's TTL except OPT's
    opt_start: int = -1  # OPT RR [start, end) if present
    opt_end: int = -1
    soa_ttl_offset: int = -1  # first SOA in the authority section
    soa_minimum: int = -1
    answer_end: int = -1  # offset just past the answer section
    end: int = -1  # offset just past the last record scanned


def scan_response(msg: bytes, full: bool = True) -> ResponseScan:
    """Walk an upstream response once, recording TTL offsets, the SOA and the OPT.

    With full=False the walk stops where a minimal response ends (after the
    answer section of a positive answer, after the authority section
    otherwise): the miss path drops the rest, so it need not parse it.
    """
    if _c_scan_response is not None:  # heimdall/_hotpath.c: the same walk, ~1/5 of the instructions
        try:
            return ResponseScan(*_c_scan_response(msg, full))
        except ValueError as exc:
            raise WireError(str(exc)) from None
    return py_scan_response(msg, full)


def py_scan_response(msg: bytes, full: bool = True) -> ResponseScan:
    """scan_response in Python: without the C extension, and the reference the C walk is tested against."""
    if len(msg) < HEADER_LEN:
        raise WireError("response shorter than a header")
    qd, an, ns, ar = _COUNTS.unpack_from(msg, 4)
    if qd != 1:
        raise WireError("response must echo exactly one question")
    qend = question_end(msg)
    scan = ResponseScan(msg[3] & RCODE_MASK, qend, an, ns, ar, [])
    off = qend
    scan.answer_end = qend if an == 0 else -1
    count = an + ns + ar
    if not full:
        count = an if scan.rcode == NOERROR and an > 0 else an + ns
    ttl_offsets = scan.ttl_offsets
    for i in range(count):
        start = off
        off, fixed, rtype = rr_end(msg, off)
        if rtype == TYPE_OPT:
            if i < an + ns or scan.opt_start >= 0:
                raise WireError("misplaced or duplicate OPT record")
            scan.opt_start, scan.opt_end = start, off
            ext = msg[fixed + 4]
            scan.rcode |= ext << 4
            continue
        ttl_offsets.append(fixed + 4)
        if i == an - 1:
            scan.answer_end = off
        if rtype == TYPE_SOA and an <= i < an + ns and scan.soa_ttl_offset < 0:
            scan.soa_ttl_offset = fixed + 4
            scan.soa_minimum = _U32.unpack_from(msg, off - 4)[0]
    scan.end = off
    if full and off != len(msg):
        raise WireError("trailing bytes after the last record")
    return scan


def read_ttl(buf: bytes | bytearray, off: int) -> int:
    return _U32.unpack_from(buf, off)[0]


def write_ttl(buf: bytearray, off: int, ttl: int) -> None:
    _U32.pack_into(buf, off, max(0, min(ttl, 0x7FFFFFFF)))


def age_ttls(tail: bytes, offsets: tuple[int, ...], elapsed: int) -> bytes:
    """A copy of tail with every TTL at offsets lowered by elapsed seconds (not below 0)."""
    buf = bytearray(tail)
    for off in offsets:
        write_ttl(buf, off, _U32.unpack_from(buf, off)[0] - elapsed)
    return bytes(buf)


def set_ttls(tail: bytes, offsets: tuple[int, ...], ttl: int) -> bytes:
    buf = bytearray(tail)
    for off in offsets:
        write_ttl(buf, off, ttl)
    return bytes(buf)


def make_query(qid: int, rd: bool, cd: bool, question: bytes, do: bool, edns: bool = True) -> bytes:
    """An upstream query: our ID, the client's RD/CD, one question, our OPT."""
    head = _U16_U16.pack(qid, (0x100 if rd else 0) | (CD if cd else 0))  # ID, then RD in byte 2 and CD in 3
    if edns:
        return b"".join((head, EDNS_COUNTS, question, OPTS[OUR_UDP_SIZE, do]))
    return head + PLAIN_COUNTS + question


def reply_matches(reply: bytes, qid: int, question: bytes, exact: bool = False) -> bool:
    """RFC 5452: an upstream reply counts only if ID, QR and the question match."""
    if _c_reply_matches is not None and type(reply) is bytes and type(question) is bytes:
        return _c_reply_matches(reply, qid, question, exact)  # heimdall/_hotpath.c: the same test
    return py_reply_matches(reply, qid, question, exact)


def py_reply_matches(reply: bytes, qid: int, question: bytes, exact: bool = False) -> bool:
    """reply_matches in Python: without the C extension, and the reference the C test is held to."""
    if len(reply) < HEADER_LEN + len(question) or reply[2] & QR == 0:
        return False
    if _U16.unpack_from(reply, 0)[0] != qid or _U16.unpack_from(reply, 4)[0] != 1:
        return False
    echoed = reply[HEADER_LEN:HEADER_LEN + len(question)]
    if exact:  # 0x20 (HEIMDALL_USE_0X20): the mixed case we sent must come back as sent
        return echoed == question
    return echoed.lower() == question.lower()


def reply_question(reply: bytes) -> tuple[int, int]:
    """(end of the question, qtype) of a reply we built; (-1, 0) when it carries no question."""
    if len(reply) < HEADER_LEN or reply[4:6] != b"\x00\x01":
        return -1, 0
    try:
        qend = question_end(reply)
    except WireError:
        return -1, 0
    return qend, (reply[qend - 4] << 8) | reply[qend - 3]

