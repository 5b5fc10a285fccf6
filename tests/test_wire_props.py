"""Property tests of every wire-level function against hostile bytes and against dnspython.

Hostile: compression loops (self, mutual, long chains), pointers forward and
out of range, labels over 63 and the reserved label types 0x40/0x80, names
over 255 bytes, section counts far larger than the packet, truncation at
every offset. The contract: wire/bailiwick/cache functions raise nothing but
WireError, terminate, and agree with dnspython on valid messages; patched
IDs, questions and TTLs round-trip.
"""

from __future__ import annotations

import os
import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from heimdall import anyquery, bailiwick, blocklist, cache, cachekey, wire
from heimdall.cache import Cache, build_entry, clamp_ttls
from heimdall.upstream import mix_case
from heimdall.wire import WireError

# HEIMDALL_PROP_EXAMPLES=20000 for a long run; CI runs the default
PROPS = settings(max_examples=int(os.environ.get("HEIMDALL_PROP_EXAMPLES", "400")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
LABEL = st.text(alphabet=LETTERS, min_size=1, max_size=63)
SHORT_LABEL = st.text(alphabet=LETTERS, min_size=1, max_size=12)
NAME = st.lists(SHORT_LABEL, min_size=1, max_size=5).map(lambda ls: ".".join(ls) + ".")
LONG_NAME = st.lists(LABEL, min_size=1, max_size=8)  # may exceed 255 bytes

# --- hostile name pieces ---
LABEL_PIECE = st.binary(max_size=70).map(lambda b: bytes([len(b)]) + b)  # lengths 64..70 are invalid types
POINTER = st.integers(0, 0x3FFF).map(lambda p: bytes((0xC0 | p >> 8, p & 0xFF)))
NEAR_POINTER = st.integers(0, 80).map(lambda p: bytes((0xC0, p)))  # lands inside small packets: loops
ODD = st.sampled_from([b"\x00", b"\x40", b"\x80", b"\xbf", b"\xff", b"\xc0", b"\x3f"])
PIECES = st.lists(st.one_of(LABEL_PIECE, POINTER, NEAR_POINTER, ODD), max_size=8).map(b"".join)


def header(qid=0x1234, b2=0x01, b3=0, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HBBHHHH", qid, b2, b3, qd, an, ns, ar)


@st.composite
def hostile_message(draw) -> bytes:
    """A header with arbitrary counts, then names built from hostile pieces and RR-ish fixed parts."""
    counts = draw(st.tuples(*[st.one_of(st.integers(0, 3), st.integers(0, 0xFFFF))] * 4))
    flags = draw(st.tuples(st.integers(0, 255), st.integers(0, 255)))
    body = b""
    for _ in range(draw(st.integers(1, 5))):
        body += draw(PIECES)
        body += draw(st.one_of(st.just(b"\x00\x01\x00\x01"), st.binary(max_size=14)))
    return header(draw(st.integers(0, 0xFFFF)), flags[0], flags[1], *counts) + body


LOOPS = [
    header() + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
    header(an=1) + b"\x00\x00\x01\x00\x01" + b"\xc0\x11\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04",
    header(an=1) + b"\x00\x00\x01\x00\x01" + b"\xc0\x13\xc0\x11" + b"\x00" * 14,  # mutual
    header(an=1) + b"\x01a\xc0\x0c\x00\x01\x00\x01" + b"\xc0\x0c" + b"\x00" * 14,  # label then loop
    header(an=1) + b"\x00\x00\x01\x00\x01" + b"\xc0\xff\x00\x01\x00\x01\x00\x00\x00\x05\x00\x00",  # forward
    header(an=1) + b"\x00\x00\x01\x00\x01" + b"\xff\xff" + b"\x00" * 10,  # out of range
    header(an=0xFFFF, ns=0xFFFF, ar=0xFFFF) + b"\x00\x00\x01\x00\x01",  # counts far beyond the packet
    header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label of 64
    header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # 257-byte name
]


def every_function(msg: bytes) -> None:
    """Run every wire-level entry point on msg; only WireError may escape."""
    for fn in (lambda: wire.question_end(msg), lambda: wire.name_end(msg, 12), lambda: wire.rr_end(msg, 12),
               lambda: wire.scan_response(msg), lambda: wire.scan_response(msg, full=False),
               lambda: bailiwick.read_name(msg, 12)):
        try:
            fn()
        except WireError:
            pass
    try:
        q = wire.parse_query(msg) if len(msg) >= 12 else None
    except WireError:
        q = None
    if q is not None:
        for tcp in (False, True):
            cachekey.cache_key(msg, q, tcp)
        wire.error_reply(msg, wire.REFUSED, q.qend, q.edns)
        if q.qtype == 255:
            dns.message.from_wire(anyquery.reply(msg, q, "minimal"))
    if len(msg) >= 12:
        wire.error_reply(msg, wire.FORMERR)
        wire.reply_matches(msg, 0x1234, b"\x00\x00\x01\x00\x01")
    try:
        scan = wire.scan_response(msg, full=False)
        bailiwick.clean(msg, scan)
        bailiwick.strip(msg, scan)
    except WireError:
        pass
    client = header() + b"\x00\x00\x01\x00\x01"
    try:
        build_entry(msg, client, wire.parse_query(client), 512, 1000, 0, 86400, 3600)
    except WireError:
        pass


@pytest.mark.parametrize("msg", LOOPS)
def test_compression_loops_and_bad_pointers_raise_wire_error(msg):
    every_function(msg)
    client = header() + b"\x00\x00\x01\x00\x01"
    with pytest.raises(WireError):
        build_entry(msg, client, wire.parse_query(client), 512, 1000, 0, 86400, 3600)


def test_long_pointer_chains_are_cut_off():
    """Each pointer points backwards (legal), 199 hops deep: refused after MAX_JUMPS, never a hang."""
    msg = header(an=1) + b"\x00\x00\x01\x00\x01" + b"\xc0\x0c" + b"".join(
        struct.pack("!H", 0xC000 | (17 + 2 * (i - 1))) for i in range(1, 200))
    with pytest.raises(WireError, match="loop"):
        bailiwick.read_name(msg, len(msg) - 2)
    assert bailiwick.read_name(msg, 17 + 2 * 10) == b"\x00"  # a short chain is fine


@PROPS
@given(hostile_message())
def test_hostile_messages_raise_only_wire_error(msg):
    every_function(msg)


@PROPS
@given(hostile_message(), st.integers(0, 300))
def test_every_truncation_raises_only_wire_error(msg, cut):
    every_function(msg[:cut])


@PROPS
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_wire_error(msg):
    every_function(msg)


@PROPS
@given(st.binary(min_size=2, max_size=300), st.integers(0, 300))
def test_read_name_terminates_and_is_bounded(msg, off):
    try:
        name = bailiwick.read_name(msg, off % len(msg))
    except WireError:
        return
    assert len(name) <= 255 and name.endswith(b"\x00") and name == name.lower()
    dns.name.from_wire(name, 0)  # a valid uncompressed wire name


# --- agreement with dnspython on valid messages ---

@PROPS
@given(LONG_NAME, st.integers(0, 0xFFFF))
def test_question_end_agrees_with_dnspython_on_name_length(labels, qtype):
    raw = b"".join(bytes([len(lb)]) + lb.encode() for lb in labels) + b"\x00"
    msg = header() + raw + struct.pack("!HH", qtype, 1)
    try:
        dns.name.from_wire(raw, 0)
        ok = True
    except dns.name.NameTooLong:
        ok = False
    if ok:
        assert wire.question_end(msg) == len(msg)
        q = wire.parse_query(msg)
        assert q.qtype == qtype and q.qend == len(msg)
    else:
        with pytest.raises(WireError):
            wire.question_end(msg)


RECORD = st.tuples(st.sampled_from(["q", "sub", "cname", "other"]), st.sampled_from(["A", "AAAA", "TXT", "CNAME",
                                                                                     "MX", "NS", "SOA"]),
                   st.integers(0, 2**32 - 1))


def rdata_for(rdtype: str, name: str) -> str:
    return {"A": "192.0.2.1", "AAAA": "2001:db8::1", "TXT": '"hello"', "CNAME": f"c.{name}",
            "MX": f"10 mx.{name}", "NS": f"ns.{name}",
            "SOA": f"ns.{name} host.{name} 1 2 3 4 60"}[rdtype]


@st.composite
def upstream_reply(draw):
    """A dnspython-built reply with compression across related names and random sections."""
    qname = draw(NAME)
    qtype = draw(st.sampled_from(["A", "AAAA", "TXT", "MX"]))
    q = dns.message.make_query(qname, qtype, use_edns=draw(st.sampled_from([False, 0])))
    r = dns.message.make_response(q)
    r.set_rcode(draw(st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL])))
    names = {"q": qname, "sub": "x." + qname, "cname": "c." + qname, "other": draw(NAME)}
    for section in (r.answer, r.authority, r.additional):
        for which, rdtype, ttl in draw(st.lists(RECORD, max_size=4)):
            owner = names[which]
            section.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, rdata_for(rdtype, owner)))
    return q, r


def sections_of(m: dns.message.Message) -> list:
    return [rr for sec in (m.answer, m.authority, m.additional) for rrs in sec for rr in rrs]


@PROPS
@given(upstream_reply())
def test_scan_response_agrees_with_dnspython(qr):
    q, r = qr
    w = r.to_wire()
    m = dns.message.from_wire(w, one_rr_per_rrset=True)
    scan = wire.scan_response(w)
    assert scan.rcode == m.rcode()
    assert (scan.ancount, scan.nscount) == (sum(map(len, m.answer)), sum(map(len, m.authority)))
    assert scan.end == len(w) and (scan.opt_start >= 0) == (m.edns >= 0)
    rfc2181 = [t if t <= 0x7FFFFFFF else 0 for t in (wire.read_ttl(w, off) for off in scan.ttl_offsets)]
    assert rfc2181 == [
        rrs.ttl for sec in (m.answer, m.authority, m.additional) for rrs in sec for _ in rrs]
    # every owner name, compressed or not, decompresses as dnspython reads it
    off, owners = scan.qend, []
    for _ in range(scan.ancount + scan.nscount + scan.arcount - (1 if scan.opt_start >= 0 else 0)):
        owners.append(bailiwick.read_name(w, off))
        off = wire.rr_end(w, off)[0]
    assert owners == [rrs.name.to_wire().lower() for sec in (m.answer, m.authority, m.additional)
                      for rrs in sec for _ in rrs]


@PROPS
@given(upstream_reply(), st.sampled_from([512, 1232, 65535]),
       st.lists(st.booleans(), min_size=1, max_size=30), st.integers(0, 0xFFFF))
def test_build_entry_reply_is_valid_in_bailiwick_patched_and_within_limit(qr, limit, flips, qid):
    """The cached reply: parses, carries the client's ID and question case, only records about the
    question (its name and CNAME chain; the negative answer's SOA zone), and fits the limit."""
    q, r = qr
    response = r.to_wire()
    client_msg = q
    client_msg.id = qid
    cw = bytearray(client_msg.to_wire())
    qend_guess = 12 + len(q.question[0].name.to_wire())
    for i in range(12, qend_guess):  # the client's own 0x20 case
        if flips[i % len(flips)] and chr(cw[i]).isalpha():
            cw[i] ^= 0x20
    cw = bytes(cw)
    cq = wire.parse_query(cw)
    try:
        entry, ttl = build_entry(response, cw, cq, limit, 1000, 0, 86400, 3600)
    except WireError:
        return
    out = entry.reply(cw)
    assert out[:2] == cw[:2] and out[12:cq.qend] == cw[12:cq.qend]  # patched ID and question round-trip
    assert len(out) <= limit
    m = dns.message.from_wire(out)
    assert m.id == qid and m.question[0].name == q.question[0].name
    if m.flags & dns.flags.TC:
        assert not m.answer
        return
    qn = q.question[0].name
    chain = {qn}
    grew = True
    while grew:
        grew = False
        for rrs in r.answer:
            if rrs.rdtype == dns.rdatatype.CNAME and rrs.name in chain:
                for rr in rrs:
                    if rr.target not in chain:
                        chain.add(rr.target)
                        grew = True
    for rrs in m.answer:
        assert rrs.name in chain, (rrs.name, chain)
    if m.authority:
        soas = [rrs for rrs in m.authority if rrs.rdtype == dns.rdatatype.SOA]
        assert len(soas) == 1 and any(n.is_subdomain(soas[0].name) for n in chain)
        assert all(rrs.name.is_subdomain(soas[0].name) for rrs in m.authority)
    assert not m.additional or all(rrs.rdtype == dns.rdatatype.OPT for rrs in m.additional)


@PROPS
@given(upstream_reply(), st.binary(min_size=1, max_size=8), st.integers(0, 400))
def test_build_entry_on_corrupted_replies_raises_only_wire_error(qr, junk, pos):
    q, r = qr
    w = r.to_wire()
    pos %= len(w)
    bad = w[:pos] + junk + w[pos + len(junk):]
    cw = q.to_wire()
    try:
        entry, _ = build_entry(bad, cw, wire.parse_query(cw), 1232, 1000, 0, 86400, 3600)
    except WireError:
        return
    entry.refresh(1005)
    entry.reply(cw)
    entry.stale_reply(cw)


# --- ID / question / TTL patching ---

@PROPS
@given(NAME, st.integers(0, 0xFFFF), st.booleans(), st.booleans(), st.booleans())
def test_make_query_round_trips_and_reply_matches_only_its_own(name, qid, rd, cd, do):
    question = dns.name.from_text(name).to_wire().lower() + b"\x00\x01\x00\x01"
    w = wire.make_query(qid, rd, cd, question, do)
    m = dns.message.from_wire(w)
    assert m.id == qid and bool(m.flags & dns.flags.RD) == rd and bool(m.flags & dns.flags.CD) == cd
    assert bool(m.ednsflags & dns.flags.DO) == do and m.payload == wire.OUR_UDP_SIZE
    resp = dns.message.make_response(m).to_wire()
    assert wire.reply_matches(resp, qid, question)
    assert not wire.reply_matches(resp, qid ^ 1, question)
    assert not wire.reply_matches(w, qid, question)  # QR=0: a query is never a reply
    mixed = mix_case(question)
    assert mixed.lower() == question and mixed[-4:] == question[-4:]
    assert wire.reply_matches(resp, qid, mixed)  # case-insensitive without 0x20
    if mixed != question:
        assert not wire.reply_matches(resp, qid, mixed, exact=True)  # 0x20: must echo our case
    echoed = dns.message.make_response(dns.message.from_wire(wire.make_query(qid, rd, cd, mixed, do))).to_wire()
    assert wire.reply_matches(echoed, qid, mixed, exact=True)


@PROPS
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8), st.integers(0, 2**33), st.integers(0, 2**31))
def test_ttl_patching(ttls, elapsed, ttl):
    tail = b"".join(struct.pack("!HI", 0xABCD, t) for t in ttls)
    offsets = tuple(2 + 6 * i for i in range(len(ttls)))
    aged = wire.age_ttls(tail, offsets, elapsed)
    for i, t in enumerate(ttls):
        assert wire.read_ttl(aged, offsets[i]) == max(0, min(t - elapsed, 0x7FFFFFFF))
        assert aged[6 * i:6 * i + 2] == b"\xab\xcd"  # only TTLs change
    set_ = wire.set_ttls(tail, offsets, ttl)
    assert all(wire.read_ttl(set_, o) == min(ttl, 0x7FFFFFFF) for o in offsets)


@PROPS
@given(upstream_reply(), st.integers(0, 100_000), st.integers(0, 3600), st.integers(0, 86400))
def test_clamp_ttls_stays_within_bounds(qr, negcap, lo, hi):
    assume(lo <= hi)
    _q, r = qr
    w = bytearray(r.to_wire())
    scan = wire.scan_response(bytes(w))
    ttl = clamp_ttls(w, scan, lo, hi, negcap)
    got = [wire.read_ttl(w, off) for off in scan.ttl_offsets]
    if scan.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        assert ttl == -1
        return
    negative = scan.rcode == dns.rcode.NXDOMAIN or scan.ancount == 0
    if not negative:
        assert all(lo <= t <= hi for t in got) and ttl == (min(got) if got else -1)
    elif scan.soa_ttl_offset < 0:
        assert ttl == -1 and all(lo <= t <= hi for t in got)
    else:
        assert 0 <= ttl <= negcap and ttl <= hi and all(t <= ttl for t in got)
        assert wire.read_ttl(w, scan.soa_ttl_offset) == ttl


@PROPS
@given(NAME, st.sampled_from(["A", "ANY", "MX"]), st.integers(0, 0xFFFF), st.integers(0, 2000))
@example("x.", "A", 0, 0)
def test_cache_hit_reply_agrees_with_hot_path_composition(name, rdtype, qid, elapsed):
    """The slow path (Entry.reply after refresh) and the hot path's byte composition are the same reply."""
    q = dns.message.make_query(name, rdtype)
    q.id = qid
    cw = q.to_wire()
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(name, 3000, "IN", "A", "192.0.2.1"))
    cq = wire.parse_query(cw)
    e, ttl = build_entry(r.to_wire(), cw, cq, 512, 1000, 0, 86400, 3600)
    cache = Cache(10)
    cache.put(cachekey.cache_key(cw, cq, False), e)
    got = cache.get_fresh(cw[2:].lower(), 1000 + elapsed)
    if elapsed >= 3000:
        assert got is None
        return
    assert got is e
    hot = cw[:2] + e.head + cw[12:e.qend] + e.tail
    assert hot == e.reply(cw)
    m = dns.message.from_wire(hot)
    assert m.id == qid and m.answer[0].ttl == 3000 - elapsed


@PROPS
@given(NAME, st.booleans(), st.sampled_from([1, 3, 255]), st.integers(0, 0xFFFF))
def test_any_reply_is_one_hinfo_with_the_clients_question(name, edns, qclass, qid):
    q = dns.message.make_query(name, "ANY", rdclass=qclass, use_edns=0 if edns else False)
    q.id = qid
    cw = q.to_wire()
    cq = wire.parse_query(cw)
    out = anyquery.reply(cw, cq, "minimal")
    m = dns.message.from_wire(out)
    assert m.id == qid and m.question[0].name == q.question[0].name and (m.edns >= 0) == edns
    assert len(m.answer) == 1 and m.answer[0].rdtype == dns.rdatatype.HINFO
    assert dns.message.from_wire(anyquery.reply(cw, cq, "refused")).rcode() == dns.rcode.REFUSED


@PROPS
@given(st.lists(SHORT_LABEL, min_size=0, max_size=4), st.lists(SHORT_LABEL, min_size=0, max_size=4))
def test_is_subdomain_agrees_with_dnspython(a, b):
    na, nb = dns.name.from_text(".".join(a) + "." if a else "."), dns.name.from_text(".".join(b) + "." if b else ".")
    assert bailiwick.is_subdomain(na.to_wire().lower(), nb.to_wire().lower()) == na.is_subdomain(nb)
    nc = dns.name.from_text(".".join(a + b) + "." if a + b else ".")
    assert bailiwick.is_subdomain(nc.to_wire().lower(), nb.to_wire().lower())


def test_suffix_that_is_not_a_label_boundary_is_not_a_subdomain():
    assert not bailiwick.is_subdomain(dns.name.from_text("evilexample.test.").to_wire(),
                                      dns.name.from_text("example.test.").to_wire())
    assert not bailiwick.is_subdomain(dns.name.from_text("a.bexample.test.").to_wire(),
                                      dns.name.from_text("example.test.").to_wire())


# --- the C walks (heimdall/_hotpath.c) against their Python twins ---

def outcome(fn, *args):
    """A walk's result, or the WireError message it raised (nothing else may escape)."""
    try:
        return fn(*args)
    except WireError as exc:
        return ("WireError", str(exc))


def same_walks(msg: bytes) -> None:
    """scan_response (full and minimal) and parse_query of C and Python agree, errors word for word."""
    for full in (True, False):
        assert outcome(wire.scan_response, msg, full) == outcome(wire.py_scan_response, msg, full)
    if len(msg) >= wire.HEADER_LEN:  # parse_query's callers have checked the header's length
        q = outcome(wire.parse_query, msg)
        assert q == outcome(wire.py_parse_query, msg)
        if isinstance(q, wire.Query):
            for tcp in (False, True):
                assert cachekey.cache_key(msg, q, tcp) == cachekey.py_cache_key(msg, q, tcp)


needs_c = pytest.mark.skipif(wire._c_scan_response is None, reason="C extension not built (no compiler)")


@needs_c
@PROPS
@given(upstream_reply())
def test_c_walks_agree_with_python_on_valid_replies(qr):
    q, r = qr
    same_walks(r.to_wire())
    same_walks(q.to_wire())


@needs_c
@PROPS
@given(hostile_message(), st.integers(0, 300))
def test_c_walks_agree_with_python_on_hostile_and_truncated_messages(msg, cut):
    same_walks(msg)
    same_walks(msg[:cut])


@needs_c
@PROPS
@given(st.binary(max_size=600))
def test_c_walks_agree_with_python_on_random_bytes(msg):
    same_walks(msg)
    same_walks(bytearray(msg))


@st.composite
def any_query(draw) -> bytes:
    """A query as a client may send it: any case, flags, type and class (letters among them: 65 is
    'A'), with or without an OPT of any size and DO bit."""
    labels = draw(st.lists(st.binary(min_size=1, max_size=12), min_size=0, max_size=4))
    name = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
    qtype = draw(st.one_of(st.sampled_from([1, 28, 65, 255, 0x4141, 0x6161]), st.integers(0, 0xFFFF)))
    qclass = draw(st.one_of(st.sampled_from([1, 3, 255, 0x41]), st.integers(0, 0xFFFF)))
    opt = b""
    if draw(st.booleans()):
        size = draw(st.one_of(st.sampled_from([0, 511, 512, 1231, 1232, 4096]), st.integers(0, 0xFFFF)))
        ttl = draw(st.sampled_from([0, wire.DO_BIT, 0x00FF0000]))
        opt = b"\x00\x00\x29" + struct.pack("!HIH", size, ttl, 0)
    b2, b3 = draw(st.integers(0, 0x7F)), draw(st.integers(0, 255))
    return header(0x1234, b2, b3, ar=1 if opt else 0) + name + struct.pack("!HH", qtype, qclass) + opt


@needs_c
@PROPS
@given(any_query())
def test_c_cache_key_agrees_with_python(msg):
    same_walks(msg)
    q = wire.parse_query(msg)
    assert cachekey.cache_key(msg, q, False) == cachekey.py_cache_key(msg, q, False)


# --- build_entry's parts: C (cache._c_entry_parts) against the Python twin ---

needs_c_parts = pytest.mark.skipif(cache._c_entry_parts is None, reason="C extension not built (no compiler)")
BOUNDS = st.tuples(st.sampled_from([0, 1, 30, 300]), st.sampled_from([0, 60, 3600, 86400, 0x7FFFFFFF]),
                   st.sampled_from([0, 5, 3600, 86400]))


def same_parts(response: bytes, client: bytes, limit: int, bounds: tuple[int, int, int]) -> bool:
    """The C parts equal the Python twin's whenever C takes the answer; True when it took it."""
    try:
        q = wire.parse_query(client)
    except WireError:
        return False
    opt = wire.OPTS[wire.OUR_UDP_SIZE, q.do] if q.edns else b""
    got = cache._c_entry_parts(response, client, q.qend, limit, *bounds, q.do, opt)
    if got is None:
        return False
    assert got == cache.py_entry_parts(response, client, q, limit, *bounds, opt)
    return True


@needs_c_parts
@PROPS
@given(upstream_reply(), st.sampled_from([100, 512, 1232, 65535]), BOUNDS, st.integers(0, 255),
       st.integers(0, 255), st.booleans())
def test_c_entry_parts_agree_with_python(qr, limit, bounds, b2, b3, dnssec_ok):
    q, r = qr
    if dnssec_ok:
        q.want_dnssec(True)
    r.flags |= dns.flags.AD if b3 & 1 else 0
    client = bytearray(q.to_wire())
    client[2], client[3] = b2 & 0x7F, b3
    same_parts(r.to_wire(), bytes(client), limit, bounds)


@st.composite
def plain_reply(draw):
    """A reply the fast checks can vouch for: the answer on the question's CNAME chain, or no answer
    and authority records at the question name or an ancestor (the SOA's zone above them or not)."""
    q, r = draw(upstream_reply())
    qname = q.question[0].name
    r.answer, r.authority = [], []
    if draw(st.booleans()):
        for which, rdtype, ttl in draw(st.lists(RECORD, min_size=1, max_size=4)):
            owner = qname if which != "cname" else dns.name.from_text("c." + qname.to_text())
            r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, rdata_for(rdtype, owner.to_text())))
    else:
        r.set_rcode(draw(st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.REFUSED])))
        for depth, rdtype, ttl in draw(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["SOA", "NS", "SOA"]),
                                                          st.integers(0, 2**32 - 1)), max_size=3)):
            owner = qname.split(max(2, len(qname) - depth))[1]
            r.authority.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, rdata_for(rdtype, owner.to_text())))
    return q, r


@needs_c_parts
@PROPS
@given(plain_reply(), st.sampled_from([100, 512, 1232, 65535]), BOUNDS, st.integers(0, 255), st.booleans())
def test_c_entry_parts_agree_with_python_on_plain_replies(qr, limit, bounds, b3, dnssec_ok):
    q, r = qr
    q.want_dnssec(dnssec_ok)
    client = bytearray(q.to_wire())
    client[3] = b3
    same_parts(r.to_wire(), bytes(client), limit, bounds)


@needs_c_parts
@PROPS
@given(upstream_reply(), st.binary(min_size=1, max_size=8), st.integers(0, 400), BOUNDS)
def test_c_entry_parts_agree_with_python_on_corrupted_replies(qr, junk, pos, bounds):
    q, r = qr
    w = r.to_wire()
    pos %= len(w)
    same_parts(w[:pos] + junk + w[pos + len(junk):], q.to_wire(), 1232, bounds)


@needs_c_parts
@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.NXDOMAIN])
def test_c_entry_parts_take_plain_answers(rcode):
    """A compressed answer (CNAME chain) and a negative answer with its zone's SOA go the C way."""
    q = dns.message.make_query("www.example.test.", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if rcode == dns.rcode.NOERROR:
        r.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "CNAME", "c.www.example.test."))
        r.answer.append(dns.rrset.from_text("c.www.example.test.", 90000, "IN", "A", "192.0.2.1"))
    else:
        r.authority.append(dns.rrset.from_text("example.test.", 3600, "IN", "SOA",
                                               "ns.example.test. host.example.test. 1 2 3 4 60"))
    for limit in (30, 1232):
        assert same_parts(r.to_wire(), q.to_wire(), limit, (0, 86400, 3600))


# --- the blocklist's suffix walk: C (blocklist.suffix_in) against the Python twin ---

@pytest.mark.skipif(blocklist.suffix_in is blocklist.py_suffix_in, reason="C extension not built (no compiler)")
@PROPS
@given(st.lists(SHORT_LABEL, max_size=5), st.lists(st.lists(SHORT_LABEL, max_size=3), max_size=6), st.booleans(),
       st.binary(max_size=20))
def test_c_suffix_in_agrees_with_python(labels, listed, skip_tld, junk):
    def wire_name(ls):
        return b"".join(bytes((len(x),)) + x.lower().encode() for x in ls) + b"\x00"
    qname = wire_name(labels)
    names = frozenset([wire_name(ls) for ls in listed] + [wire_name(labels[i:]) for i in range(0, len(labels), 2)])
    for name in (qname, junk, qname + junk, junk + qname):
        for within in (names, frozenset(), frozenset([name[3:]])):
            assert blocklist.suffix_in(name, within, skip_tld) == blocklist.py_suffix_in(name, within, skip_tld)


@needs_c
@PROPS
@given(upstream_reply(), st.integers(-1, 0x10000), st.booleans(), st.lists(st.booleans(), min_size=1, max_size=20),
       st.integers(0, 40))
def test_c_reply_matches_agrees_with_python(qr, qid, exact, flips, cut):
    """The C test of an upstream reply (ID, QR, question, 0x20 case) says what the Python twin says."""
    q, r = qr
    reply = r.to_wire()
    question = bytearray(q.to_wire()[12:])
    for i, flip in enumerate(flips):  # another case, and sometimes another name
        if flip and i < len(question) and chr(question[i]).isalpha():
            question[i] ^= 0x20 if i % 3 else 0x01
    for asked in (bytes(question), bytes(question[:cut]), q.to_wire()[12:]):
        for qid_ in (qid, r.id):
            for msg in (reply, reply[:cut], q.to_wire()):
                assert wire.reply_matches(msg, qid_, asked, exact) == wire.py_reply_matches(msg, qid_, asked, exact)
