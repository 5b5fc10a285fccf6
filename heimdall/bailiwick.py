"""Out-of-bailiwick stripping: an upstream reply may only tell us about the question's name.

The cache stores minimal responses (cache.build_entry): a positive answer
keeps its answer section, a negative one its authority section; additional
records (glue, the classic poisoning vehicle) are never kept. What is kept
must be about the question:

- answer: records owned by the question name or by a name on its CNAME chain
  (followed from the question, in any order), and DNAMEs owned by an ancestor
  of a name on the chain (with their RRSIGs, which share the owner);
- authority (negative answers): the SOA of a zone that contains the last
  name of the chain, and records (NSEC, NSEC3, RRSIG, NS) inside that zone.

Anything else (an A for www.victim.test riding along in the answer to
x.example.test, an SOA or NS for another zone) is removed before the answer
is cached or sent. `clean()` is the cheap check every miss pays (owners that
are pointers to the question need no decompression); `strip()` rebuilds the
rare offending message with dnspython.
"""

from __future__ import annotations

from heimdall import wire
from heimdall.wire import ResponseScan, WireError

TYPE_CNAME, TYPE_DNAME = 5, 39
MAX_JUMPS = 64


def read_name(msg: bytes, off: int) -> bytes:
    """The lower-cased, uncompressed wire form of the name at off (pointers followed, loops refused)."""
    return _name(msg, off)[0]


def _name(msg: bytes, off: int) -> tuple[bytes, int]:
    """(lower-cased uncompressed name at off, offset just past it where it starts)."""
    parts = []
    total = 0
    jumps = 0
    end = -1
    n = len(msg)
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        length = msg[off]
        if length == 0:
            if end < 0:
                end = off + 1
            parts.append(b"\x00")
            return b"".join(parts).lower(), end
        if length >= 0xC0:
            if off + 2 > n:
                raise WireError("truncated compression pointer")
            jumps += 1
            if jumps > MAX_JUMPS:
                raise WireError("compression loop")
            target = ((length & 0x3F) << 8) | msg[off + 1]
            if target >= off:
                raise WireError("compression pointer does not point backwards")
            if end < 0:
                end = off + 2
            off = target
            continue
        if length > 63:
            raise WireError("unknown label type")
        if off + 1 + length > n:
            raise WireError("label runs past the end of the message")
        total += length + 1
        if total > 254:
            raise WireError("name longer than 255 bytes")
        parts.append(msg[off:off + 1 + length])
        off += 1 + length


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """name equals zone or lies under it (both lower-cased uncompressed wire names)."""
    if zone == b"\x00":
        return True
    if not name.endswith(zone):
        return False
    if len(name) == len(zone):
        return True
    # the suffix must start at a label boundary of name
    off = 0
    cut = len(name) - len(zone)
    while off < cut:
        off += name[off] + 1
    return off == cut


def _records(msg: bytes, off: int, count: int) -> tuple[list[tuple[bytes, int, int, int]], int]:
    """[(owner, type, rdata offset, rdata length)] for count records from off; the end offset."""
    out = []
    n = len(msg)
    unpack = wire._RR_FIXED.unpack_from
    for _ in range(count):
        owner, fixed = _name(msg, off)
        if fixed + 10 > n:
            raise WireError("resource record header truncated")
        rtype, _cls, _ttl, rdlen = unpack(msg, fixed)
        off = fixed + 10 + rdlen
        if off > n:
            raise WireError("resource record data truncated")
        out.append((owner, rtype, fixed + 10, rdlen))
    return out, off


def _chain(msg: bytes, qname: bytes, answers: list[tuple[bytes, int, int, int]]) -> set[bytes]:
    """The question name and every name its CNAMEs lead to (bounded: each record used once)."""
    names = {qname}
    grew = True
    while grew:
        grew = False
        for owner, rtype, rdoff, _ in answers:
            if rtype == TYPE_CNAME and owner in names:
                target = read_name(msg, rdoff)
                if target not in names:
                    names.add(target)
                    grew = True
    return names


def _wanted(msg: bytes, scan: ResponseScan) -> tuple[list[bool], list[bool]]:
    """Which answer and authority records (of those the cache keeps) are in bailiwick."""
    qname = read_name(msg, wire.HEADER_LEN)
    answers, off = _records(msg, scan.qend, scan.ancount)
    names = _chain(msg, qname, answers)
    keep_an = [owner in names or (rtype == TYPE_DNAME and any(is_subdomain(n, owner) for n in names))
               or (rtype == 46 and any(is_subdomain(n, owner) for n in names) and _covers_dname(msg, rdoff))
               for owner, rtype, rdoff, _ in answers]
    positive = scan.rcode == wire.NOERROR and scan.ancount > 0
    if positive:
        return keep_an, []
    auth, _ = _records(msg, off, scan.nscount)
    zone = None
    for owner, rtype, _, _ in auth:
        if rtype == wire.TYPE_SOA and any(is_subdomain(n, owner) for n in names):
            zone = owner
            break
    keep_ns = [zone is not None and is_subdomain(owner, zone) and (rtype != wire.TYPE_SOA or owner == zone)
               for owner, rtype, _, _ in auth]
    return keep_an, keep_ns


def _covers_dname(msg: bytes, rdoff: int) -> bool:
    """An RRSIG whose type covered is DNAME (owned by an ancestor of the chain)."""
    return rdoff + 2 <= len(msg) and msg[rdoff] == 0 and msg[rdoff + 1] == TYPE_DNAME


def clean(msg: bytes, scan: ResponseScan) -> bool:
    """True when every record the cache would keep is about the question (the common, cheap case)."""
    if scan.rcode == wire.NOERROR and scan.ancount > 0:
        # Fast path: each owner is a pointer to the question name or to the rdata of a CNAME already
        # on the chain (how compressors write a chain), so no name needs decompressing.
        chain = {wire.HEADER_LEN}
        off = scan.qend
        simple = True
        for ttl_off in scan.ttl_offsets[:scan.ancount]:  # the scan already walked these records
            b0 = msg[off]
            if b0 < 0xC0 or ((b0 & 0x3F) << 8 | msg[off + 1]) not in chain:
                simple = False
                break
            fixed = ttl_off - 4
            rtype = msg[fixed] << 8 | msg[fixed + 1]
            off = fixed + 10 + (msg[fixed + 8] << 8 | msg[fixed + 9])
            if rtype == TYPE_CNAME:
                chain.add(fixed + 10)
            elif rtype == TYPE_DNAME:
                simple = False
                break
        if simple:
            return True
    elif scan.ancount == 0 and _negative_is_simple(msg, scan):
        return True
    keep_an, keep_ns = _wanted(msg, scan)
    return all(keep_an) and all(keep_ns)


def _negative_is_simple(msg: bytes, scan: ResponseScan) -> bool:
    """Fast check of a negative answer: every authority owner is a pointer to a label boundary of the
    question name (so an ancestor of it), the first SOA's owner is the zone, and nothing lies above it."""
    bounds = set()
    off = wire.HEADER_LEN
    while msg[off]:
        bounds.add(off)
        off += msg[off] + 1
    bounds.add(off)
    zone = -1
    owners = []
    off = scan.qend
    for _ in range(scan.nscount):
        b0 = msg[off]
        if b0 < 0xC0:
            return False
        target = ((b0 & 0x3F) << 8) | msg[off + 1]
        if target not in bounds:
            return False
        off, _fixed, rtype = wire.rr_end(msg, off)
        if rtype == wire.TYPE_SOA:
            if zone < 0:
                zone = target
            elif target != zone:
                return False
        owners.append(target)
    return zone >= 0 and all(t <= zone for t in owners)


def strip(msg: bytes, scan: ResponseScan) -> bytes:
    """msg without the out-of-bailiwick records of its kept sections (and without additional records)."""
    import dns.exception
    import dns.message

    keep_an, keep_ns = _wanted(msg, scan)
    try:
        m = dns.message.from_wire(msg, one_rr_per_rrset=True, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError) as exc:
        raise WireError(f"cannot rebuild a reply with out-of-bailiwick records: {exc!r}") from None
    if len(m.answer) != len(keep_an) or (keep_ns and len(m.authority) != len(keep_ns)):
        raise WireError("record counts disagree while stripping")
    m.answer = [rr for rr, keep in zip(m.answer, keep_an) if keep]
    m.authority = [rr for rr, keep in zip(m.authority, keep_ns) if keep] if keep_ns else []
    m.additional = []
    try:
        return m.to_wire(max_size=65535)
    except (dns.exception.DNSException, ValueError) as exc:
        raise WireError(f"cannot rebuild a reply with out-of-bailiwick records: {exc!r}") from None
