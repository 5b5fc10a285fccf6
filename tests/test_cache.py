"""cache.py on real NSD responses: entry building, TTL policy, aging, CLOCK eviction, memory per entry."""

from __future__ import annotations

import socket
import tracemalloc

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from heimdall import cachekey, wire
from heimdall.cache import Cache, Entry, build_entry


def client_query(name: str, rdtype: str = "A", **kw) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = 4242
    return q.to_wire()


def fetch(upstream, wires: list[bytes]) -> list[bytes]:
    """Raw upstream responses for client queries, asked the way Heimdall asks (our OPT, lower case)."""
    out: dict[int, bytes] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for start in range(0, len(wires), 200):
            chunk = wires[start:start + 200]
            for i, w in enumerate(chunk, start):
                q = wire.parse_query(w)
                s.sendto(wire.make_query(i, True, False, w[12:q.qend].lower(), q.do), (upstream.address, upstream.port))
            for _ in chunk:
                data = s.recv(65535)
                out[int.from_bytes(data[:2], "big")] = data
    return [out[i] for i in range(len(wires))]


def entry_for(upstream, name, rdtype="A", limit=512, now=1000, min_ttl=0, max_ttl=86400, neg=3600, **kw):
    w = client_query(name, rdtype, **kw)
    resp = fetch(upstream, [w])[0]
    return w, build_entry(resp, w, wire.parse_query(w), limit, now, min_ttl, max_ttl, neg)


def test_entry_reply_is_the_answer_with_client_id_and_question(upstream):
    w, (e, ttl) = entry_for(upstream, "WwW.Example.TEST")
    assert ttl == 300
    r = dns.message.from_wire(e.reply(w))
    assert r.id == 4242 and r.rcode() == dns.rcode.NOERROR
    assert r.question[0].name.to_text() == "WwW.Example.TEST."
    assert r.answer[0][0].address == "192.0.2.10"
    assert not r.flags & dns.flags.AA and r.flags & dns.flags.RA


def test_positive_answers_are_minimal_negative_keep_the_soa(upstream):
    w, (e, ttl) = entry_for(upstream, "long.example.test", max_ttl=10**6)
    r = dns.message.from_wire(e.reply(w))
    assert ttl == 604800  # the answer's TTL, not the NS record's 3600 that NSD adds
    assert r.answer and not r.authority and not r.additional
    w2, (e2, _) = entry_for(upstream, "nope.example.test")
    assert dns.message.from_wire(e2.reply(w2)).authority[0].rdtype == dns.rdatatype.SOA


def test_negative_entry_uses_soa_minimum_and_cap(upstream):
    _, (_, ttl) = entry_for(upstream, "nope.example.test")
    assert ttl == 60
    w, (e, ttl) = entry_for(upstream, "nope.example.test", neg=7)
    assert ttl == 7
    assert dns.message.from_wire(e.reply(w)).authority[0].ttl == 7


def test_clamps_rewrite_every_ttl(upstream):
    w, (e, ttl) = entry_for(upstream, "www.example.test", min_ttl=400, max_ttl=500)
    assert ttl == 400  # www's 300 raised to the floor
    r = dns.message.from_wire(e.reply(w))
    assert all(400 <= rrset.ttl <= 500 for rrset in r.answer + r.authority + r.additional)


def test_too_big_for_the_client_becomes_tc(upstream):
    w, (e, _) = entry_for(upstream, "medium.example.test", "TXT", limit=512, use_edns=False)
    r = dns.message.from_wire(e.reply(w))
    assert r.flags & dns.flags.TC and not r.answer
    w2, (e2, _) = entry_for(upstream, "medium.example.test", "TXT", limit=1232, use_edns=0)
    r2 = dns.message.from_wire(e2.reply(w2))
    assert not r2.flags & dns.flags.TC and len(r2.answer[0]) == 5 and r2.edns == 0


def test_refresh_ages_then_expires(upstream):
    w, (e, ttl) = entry_for(upstream, "www.example.test", now=1000)
    assert e.refresh(1000 + 100)
    assert dns.message.from_wire(e.reply(w)).answer[0].ttl == 200
    assert e.refresh(1000 + 299)
    assert dns.message.from_wire(e.reply(w)).answer[0].ttl == 1
    assert not e.refresh(1000 + 300)
    stale = dns.message.from_wire(e.stale_reply(w))
    assert stale.answer[0].ttl == wire.STALE_TTL


def make_entry(now: int = 0, ttl: int = 10**6) -> Entry:
    return Entry(b"\x81\x80" + b"\x00" * 8, b"tail", 20, now, ttl, ())


def put_twice(c: Cache, key: bytes) -> None:
    """A full cache takes a new name the second time it comes (the doorkeeper)."""
    c.put(key, make_entry())
    c.put(key, make_entry())


def test_clock_eviction_gives_used_entries_a_second_chance():
    c = Cache(3)
    for k in (b"a", b"b", b"c"):
        c.put(k, make_entry())
    assert c.get_fresh(b"a", 0) is not None  # asked for: 'used'
    put_twice(c, b"d")
    assert set(c.map) == {b"a", b"c", b"d"} and c.evictions == 1
    put_twice(c, b"e")
    assert set(c.map) == {b"a", b"d", b"e"}
    put_twice(c, b"f")  # a went to the back of the queue, so d goes first
    assert set(c.map) == {b"a", b"e", b"f"}
    put_twice(c, b"g")  # a was not used again: its second chance is spent
    assert set(c.map) == {b"e", b"f", b"g"}


def test_a_full_cache_takes_a_new_name_only_the_second_time():
    c = Cache(3)
    for k in (b"a", b"b", b"c"):
        c.put(k, make_entry())
    for i in range(100):  # one-off names: none is taken, nothing is evicted
        c.put(b"once%d" % i, make_entry())
    assert set(c.map) == {b"a", b"b", b"c"} and c.evictions == 0 and c.not_admitted == 100
    c.put(b"twice", make_entry())
    c.put(b"twice", make_entry())
    assert b"twice" in c.map and c.evictions == 1
    assert len(c._seen) <= 1  # bounded: half the capacity, then forgotten


def test_capacity_is_never_exceeded_and_zero_disables():
    c = Cache(100)
    for i in range(1000):
        put_twice(c, b"k%d" % i)
        if i % 3 == 0:
            c.get_fresh(b"k%d" % (i // 2), i)
        assert len(c) <= 100
    assert c.evictions == 900
    z = Cache(0)
    z.put(b"x", make_entry())
    assert len(z) == 0


def test_expired_entries_are_dropped_unless_serve_stale():
    c = Cache(10)
    c.put(b"x", make_entry(now=0, ttl=10))
    assert c.get_fresh(b"x", 10) is None and b"x" not in c.map
    s = Cache(10, serve_stale=30)
    s.put(b"x", make_entry(now=0, ttl=10))
    assert s.get_fresh(b"x", 15) is None and s.get_stale(b"x", 15) is not None
    assert s.get_stale(b"x", 40) is None


def test_memory_per_entry_under_400_bytes(upstream):
    n = 20_000
    wires = [client_query(f"hit{i}.bench.test", use_edns=False) for i in range(n)]
    responses = fetch(upstream, wires)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        c = Cache(n)
        for w, resp in zip(wires, responses):
            q = wire.parse_query(w)
            e, ttl = build_entry(resp, w, q, 512, 1000, 0, 86400, 3600)
            c.put(cachekey.cache_key(w, q, tcp=False), e)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(c) == n
    assert per_entry < 400, f"{per_entry:.0f} bytes per cached entry"
    print(f"{per_entry:.0f} bytes per entry (Python allocations)")
