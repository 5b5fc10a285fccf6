"""wire.py against dnspython: parsing, the cache key's collision-freedom, TTL offsets, junk safety."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall import cachekey, wire

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=20)
NAMES = st.lists(LABEL, min_size=1, max_size=4).map(lambda ls: ".".join(ls) + ".")
QTYPES = st.sampled_from([1, 2, 5, 6, 15, 16, 28, 33, 64, 65, 90, 97, 122, 255, 0x4141, 0x6161])
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(name: str, qtype: int, edns: int | None = None, payload: int = 1232, do: bool = False,
         rd: bool = True, cd: bool = False, qid: int = 1) -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=edns if edns is not None else False,
                               payload=payload, want_dnssec=do)
    if not rd:
        q.flags &= ~dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    q.id = qid
    return q.to_wire()


@FAST
@given(NAMES, QTYPES, st.booleans(), st.integers(0, 4096), st.booleans())
def test_parse_query_agrees_with_dnspython(name, qtype, edns, payload, do):
    w = make(name, qtype, 0 if edns else None, payload, do and edns)
    q = wire.parse_query(w)
    assert q.qtype == qtype and q.qclass == 1
    assert q.edns == edns
    if edns:
        assert q.udp_size == max(512, payload) and q.do == do
    m = dns.message.from_wire(w)
    assert w[12:q.qend - 4].lower() == m.question[0].name.to_wire().lower()


def variant(w: bytes) -> tuple:
    q = wire.parse_query(w)
    return (w[12:q.qend - 4].lower(), q.qtype, q.qclass, w[2] & wire.RD, w[3] & (wire.AD | wire.CD),
            q.edns, wire.size_class(q) if q.edns else 0, q.do)


QUERY = st.builds(lambda n, t, e, p, d, rd, cd: make(n, t, 0 if e else None, p, d and e, rd, cd),
                  NAMES, QTYPES, st.booleans(), st.sampled_from([512, 1000, 1232, 4096]), st.booleans(),
                  st.booleans(), st.booleans())


def mixcase(w: bytes, flips: list[bool]) -> bytes:
    """The same query with the case of its question name's letters flipped (0x20 style)."""
    qend = wire.parse_query(w).qend
    b = bytearray(w)
    for i in range(12, qend - 4):
        if chr(b[i]).isalpha() and flips[i % len(flips)]:
            b[i] ^= 0x20
    return bytes(b)


@FAST
@given(QUERY, QUERY, st.lists(st.booleans(), min_size=1, max_size=8))
def test_cache_key_equal_exactly_when_the_answer_must_be(a, b, flips):
    ka = cachekey.cache_key(a, wire.parse_query(a), tcp=False)
    kb = cachekey.cache_key(b, wire.parse_query(b), tcp=False)
    assert (ka == kb) == (variant(a) == variant(b))
    a2 = mixcase(a, flips)
    assert cachekey.cache_key(a2, wire.parse_query(a2), tcp=False) == ka
    assert cachekey.cache_key(a, wire.parse_query(a), tcp=True) != ka


SAME_NAME_PAIR = NAMES.flatmap(lambda n: st.tuples(*[st.builds(
    lambda t, e, p, d, rd, cd, n=n: make(n.upper() if rd else n, t, 0 if e else None, p, d and e, rd, cd),
    QTYPES, st.booleans(), st.sampled_from([512, 1232]), st.booleans(), st.booleans(), st.booleans())] * 2))


@FAST
@given(SAME_NAME_PAIR)
def test_hot_path_key_never_hits_a_different_question(pair):
    """The hot path looks up a[2:].lower(); it may only find entries stored for the same variant."""
    a, b = pair
    kb = cachekey.cache_key(b, wire.parse_query(b), tcp=False)
    if a[2:].lower() == kb:
        assert variant(a) == variant(b)


@pytest.mark.parametrize("upper,lower", [(0x41, 0x61), (0x5A, 0x7A), (0x4141, 0x6161), (0x0141, 0x0161)])
def test_letter_valued_qtypes_do_not_collide(upper, lower):
    a, b = make("www.example.test.", upper), make("www.example.test.", lower)
    ka = cachekey.cache_key(a, wire.parse_query(a), tcp=False)
    kb = cachekey.cache_key(b, wire.parse_query(b), tcp=False)
    assert ka != kb
    assert a[2:].lower() != kb and b[2:].lower() != ka


@FAST
@given(NAMES, st.sampled_from([1, 28, 15, 16]), st.booleans())
def test_hot_path_key_is_the_cache_key_for_plain_queries(name, qtype, edns):
    w = make(name, qtype, 0 if edns else None, 1232)
    assert w[2:].lower() == cachekey.cache_key(w, wire.parse_query(w), tcp=False)


def test_letter_valued_qtype_gets_a_key_the_hot_path_cannot_produce():
    w = make("www.example.test.", 65)
    k = cachekey.cache_key(w, wire.parse_query(w), tcp=False)
    assert k.startswith(b"X") and w[2:].lower() != k


@FAST
@given(st.binary(min_size=12, max_size=300))
def test_junk_raises_only_wire_error(data):
    for fn in (wire.parse_query, wire.scan_response, wire.question_end):
        try:
            fn(data)
        except wire.WireError:
            pass


@FAST
@given(QUERY, st.binary(min_size=1, max_size=40), st.integers(0, 300))
def test_corrupted_queries_raise_only_wire_error(w, junk, pos):
    pos = pos % len(w)
    for data in (w[:pos] + junk + w[pos + len(junk):], w[:pos], w + junk):
        if len(data) >= 12:
            try:
                wire.parse_query(data)
            except wire.WireError:
                pass


def response(name: str, records: list[tuple[str, int, str, str]], authority=(), rcode=0, edns=True) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for owner, ttl, rdtype, text in records:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, text))
    for owner, ttl, rdtype, text in authority:
        r.authority.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, text))
    return r.to_wire()


@FAST
@given(NAMES, st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6))
def test_scan_response_finds_every_ttl(name, ttls):
    recs = [(f"n{i}.{name}", t, "A", f"192.0.2.{i}") for i, t in enumerate(ttls)]
    w = response(name, recs)
    scan = wire.scan_response(w)
    assert [wire.read_ttl(w, o) for o in scan.ttl_offsets] == ttls
    assert scan.opt_start >= 0 and scan.opt_end == len(w)


def test_scan_response_soa_and_mixed_ttls():
    w = response("nx.example.test.", [("a.example.test.", 100, "A", "192.0.2.1"),
                                       ("b.example.test.", 200, "AAAA", "2001:db8::1")],
                 authority=[("example.test.", 3600, "SOA", "ns1.example.test. host.example.test. 1 2 3 4 60")], rcode=3)
    scan = wire.scan_response(w)
    assert scan.rcode == dns.rcode.NXDOMAIN
    assert [wire.read_ttl(w, o) for o in scan.ttl_offsets] == [100, 200, 3600]
    assert wire.read_ttl(w, scan.soa_ttl_offset) == 3600 and scan.soa_minimum == 60


@FAST
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=5), st.integers(0, 10**6))
def test_age_ttls_subtracts_and_never_goes_negative(ttls, elapsed):
    w = response("x.test.", [(f"n{i}.x.test.", t, "A", "192.0.2.1") for i, t in enumerate(ttls)], edns=False)
    scan = wire.scan_response(w)
    aged = wire.age_ttls(w, tuple(scan.ttl_offsets), elapsed)
    assert [wire.read_ttl(aged, o) for o in scan.ttl_offsets] == [max(0, t - elapsed) for t in ttls]
    assert len(aged) == len(w)


@given(NAMES, st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4, 5]))
def test_error_reply_is_a_valid_message(name, qid, rcode):
    w = make(name, 1, qid=qid)
    q = wire.parse_query(w)
    r = dns.message.from_wire(wire.error_reply(w, rcode, q.qend))
    assert r.id == qid and r.rcode() == rcode and r.flags & dns.flags.QR
    assert r.question[0].name == dns.name.from_text(name)


def test_reply_matches_rfc5452():
    w = make("www.example.test.", 1, qid=777)
    question = w[12:]
    good = response("www.example.test.", [("www.example.test.", 5, "A", "192.0.2.1")])
    good = (777).to_bytes(2, "big") + good[2:]
    assert wire.reply_matches(good, 777, question)
    assert wire.reply_matches(good, 777, question.upper())  # case-insensitive question
    assert not wire.reply_matches(good, 778, question)
    assert not wire.reply_matches(w, 777, question)  # QR=0: a query, not a reply
    other = make("evil.example.test.", 1, qid=777)[12:]
    assert not wire.reply_matches(good, 777, other)
    assert not wire.reply_matches(good[:20], 777, question)
