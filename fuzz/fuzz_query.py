"""Coverage-guided fuzz target (atheris/libFuzzer) for Heimdall's query path and cache-entry building.

    python fuzz/fuzz_query.py -runs=20000 -artifact_prefix=/tmp/crash- CORPUS_DIR
    python fuzz/fuzz_query.py --write-seeds CORPUS_DIR     # valid queries and replies to start from

One input, first byte % 3 picks the target:

- 0: the bytes are a client query. `Pipeline.answer` runs on it (UDP and
  TCP) with a cache primed from real answers (built by `build_entry` from
  replies for www/multi/alias/nope/big, as NSD sends them), plus the UDP hot
  path's lookup `data[2:].lower()` and reply composition. It must never
  raise; a UDP reply must fit the client's advertised size and carry its ID.
- 1: the bytes are an upstream reply (2: a reply assembled from the bytes by
  `structured_reply`, names made of labels and pointers to anywhere). `build_entry` turns it into a cache
  entry for a client query with the same question (both UDP sizes and TCP).
  Only WireError may escape; a built reply must carry the client's ID and
  question, fit its limit, re-parse with our own scanner, age, serve stale,
  and survive a snapshot dump/load round trip byte for byte.

Any other exception or failed check is a crash: libFuzzer saves the input
(crash-<sha1>), and tests/corpus/ keeps the ones we fixed, replayed by
tests/test_fuzz.py.
"""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    import atheris
except ImportError:  # replaying a corpus needs no atheris
    atheris = None


def _imports():
    import dns.message
    import dns.rrset

    from heimdall import cachekey, snapshot, wire
    from heimdall.cache import Cache, build_entry
    from heimdall.config import Config, HostPort
    from heimdall.outcome import Answer, Miss
    from heimdall.server import DnsServer
    return dns, snapshot, wire, cachekey, Cache, build_entry, Config, HostPort, DnsServer, Answer, Miss


if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["heimdall"]):
        dns, snapshot, wire, cachekey, Cache, build_entry, Config, HostPort, DnsServer, Answer, Miss = _imports()
else:
    dns, snapshot, wire, cachekey, Cache, build_entry, Config, HostPort, DnsServer, Answer, Miss = _imports()

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rrset  # noqa: E402

NOW = 1000
SOA = "ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60"


def _response(name: str, rdtype: str, use_edns, payload: int = 1232, do: bool = False):
    """(client query bytes, upstream reply bytes) as NSD would answer for the lab zone."""
    q = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload, want_dnssec=do)
    q.id = 0x4242
    up = dns.message.make_query(name.lower(), rdtype, use_edns=0, payload=1232, want_dnssec=do)
    r = dns.message.make_response(up)
    n = name.lower()
    if n.startswith("nope"):
        r.set_rcode(dns.rcode.NXDOMAIN)
        r.authority.append(dns.rrset.from_text("example.test.", 60, "IN", "SOA", SOA))
    elif n.startswith("alias"):
        r.answer.append(dns.rrset.from_text(n, 300, "IN", "CNAME", "www.example.test."))
        r.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "192.0.2.10"))
    elif n.startswith("big"):
        r.answer.append(dns.rrset.from_text(n, 300, "IN", "TXT", *[f'"{i:03d}{"x" * 200}"' for i in range(40)]))
    elif n.startswith("multi"):
        r.answer.append(dns.rrset.from_text(n, 300, "IN", "A", "192.0.2.31", "192.0.2.32", "192.0.2.33"))
    else:
        rt = rdtype if rdtype in ("A", "AAAA", "TXT") else "A"  # ANY: what an upstream might send
        r.answer.append(dns.rrset.from_text(n, 300, "IN", rt, {"A": "192.0.2.10", "AAAA": "2001:db8::10",
                                                               "TXT": '"t"'}[rt]))
    r.authority.append(dns.rrset.from_text("example.test.", 3600, "IN", "NS", "ns1.example.test."))
    r.additional.append(dns.rrset.from_text("ns1.example.test.", 3600, "IN", "A", "127.0.0.1"))
    return q.to_wire(), r.to_wire(max_size=65535)


PRIMED = [("www.example.test.", "A", False), ("www.example.test.", "AAAA", 0), ("multi.example.test.", "A", 0),
          ("alias.example.test.", "A", False), ("nope.example.test.", "A", 0), ("big.example.test.", "TXT", 0),
          ("big.example.test.", "TXT", False)]


def make_server():
    config = Config(upstream_servers=(HostPort("127.0.0.1", 9),))
    server = DnsServer(config, None, None)
    for name, rdtype, edns in PRIMED:
        client, reply = _response(name, rdtype, edns)
        q = wire.parse_query(client)
        for tcp in (False, True):
            limit = 65535 if tcp else wire.size_class(q)
            entry, ttl = build_entry(reply, client, q, limit, NOW, 0, 86400, 3600)
            server.cache.put(cachekey.cache_key(client, q, tcp), entry)
    return server


SERVER = make_server()


class Finding(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Finding(what)


def client_limit(q) -> int:
    return 512 if not q.edns else max(512, q.udp_size)


def fuzz_client_query(data: bytes) -> None:
    srv = SERVER
    for tcp in (False, True):
        result = srv.pipeline.answer(data, NOW + (len(data) & 3), tcp)  # never raises
        if isinstance(result, Answer):
            result = result.reply
            check(len(result) >= 12 and result[:2] == data[:2], "reply without the client's ID")
            check(result[2] & wire.QR != 0, "reply without QR")
            if not tcp:
                try:
                    q = wire.parse_query(data)
                except wire.WireError:
                    q = None
                limit = client_limit(q) if q is not None else 512
                check(len(result) <= limit, f"UDP reply of {len(result)} bytes > client's {limit}")
        elif result is not None:
            check(isinstance(result, Miss), f"answer returned {type(result)}")
            check(result.limit in (512, wire.OUR_UDP_SIZE, 65535), "odd limit")
            if not tcp:
                check(result.limit <= client_limit(result.q), "miss limit above the client's size")
    # the UDP hot path: key lookup and byte composition
    e = srv.cache.map.get(data[2:].lower())
    if e is not None and (e.aged == NOW or e.refresh(NOW)):
        out = data[:2] + e.head + data[12:e.qend] + e.tail
        m = dns.message.from_wire(out)  # a hot-path hit is always a well-formed reply
        q = wire.parse_query(data)
        check(len(out) <= client_limit(q), "hot path reply larger than the client's size")
        check(m.id == int.from_bytes(data[:2], "big"), "hot path ID")


def fuzz_upstream_reply(data: bytes) -> None:
    try:
        qend = wire.question_end(data) if len(data) >= 12 else None
    except wire.WireError:
        qend = None
    if qend is None:
        try:
            client = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + data[12:]
            wire.parse_query(client)
        except wire.WireError:
            client = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01"
    else:
        client = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + data[12:qend]
    variants = [(client, False)]
    variants.append((client[:11] + b"\x01" + client[12:] + wire.opt_record(4096, True), True))
    for cw, _edns in variants:
        try:
            q = wire.parse_query(cw)
        except wire.WireError:
            continue
        for limit in (512, wire.OUR_UDP_SIZE, 65535):
            try:
                entry, ttl = build_entry(data, cw, q, limit, NOW, 0, 86400, 3600)
            except wire.WireError:
                continue
            out = entry.reply(cw)
            check(out[:2] == cw[:2] and out[12:q.qend] == cw[12:q.qend], "ID/question not the client's")
            check(len(out) <= limit, f"reply {len(out)} > limit {limit}")
            scan = wire.scan_response(out)  # our own output re-parses (WireError here is a finding)
            check(scan.rcode == out[3] & 0xF, "rcode")
            entry.refresh(NOW + 7)
            wire.scan_response(entry.reply(cw))
            wire.scan_response(entry.stale_reply(cw))
            if ttl > 7:
                c = Cache(4)
                c.put(b"k", entry)
                loaded, _ = snapshot.load(snapshot.dump(c, NOW + 7, 1_000_000.0), 50, 1_000_000.0)
                check(len(loaded) == 1 and loaded[0][1].reply(cw) == entry.reply(cw), "snapshot round trip")


class Bytes:
    """A tiny FuzzedDataProvider (replayable without atheris): numbers and slices from the input."""

    def __init__(self, data: bytes):
        self.data, self.i = data, 0

    def int(self, n: int) -> int:
        v = self.data[self.i] if self.i < len(self.data) else 0
        self.i += 1
        return v % n if n else 0

    def u16(self) -> int:
        return self.int(256) << 8 | self.int(256)

    def take(self, n: int) -> bytes:
        out = self.data[self.i:self.i + n]
        self.i += n
        return out


TYPES = [1, 5, 6, 2, 39, 41, 46, 47, 28, 16, 15, 0xFFFF]


def structured_reply(data: bytes) -> bytes:
    """A reply assembled from the input: names that are labels and pointers to anywhere (loops, forward
    pointers, into the middle of records), records of types whose rdata holds names (CNAME, DNAME, NS,
    SOA), OPT anywhere, counts that may lie. Reaches the bailiwick and TTL logic far more often than
    byte mutation of a valid reply does."""
    p = Bytes(data)
    qname = [b"\x03www\x07example\x04test\x00", b"\x01a\x03www\x07example\x04test\x00",
             b"\x07example\x04test\x00", b"\x00"][p.int(4)]
    msg = bytearray(b"\x12\x34" + bytes((0x81 | (p.int(2) << 2), 0x80 | p.int(16))))
    counts = [1, p.int(5), p.int(4), p.int(3)]
    lie = p.int(8)
    if lie == 7:
        counts[1 + p.int(3)] += p.int(4)
    msg += struct.pack("!HHHH", *counts) + qname + b"\x00\x01\x00\x01"

    def name() -> bytes:
        kind = p.int(4)
        if kind == 0:
            return b"\xc0\x0c"
        labels = b"".join(bytes((len(lb),)) + lb for lb in (p.take(p.int(6)) for _ in range(p.int(3))) if lb)
        if kind == 1:
            return labels + b"\x00"
        target = p.u16() % (len(msg) + 40)
        return labels + struct.pack("!H", 0xC000 | target)

    for _ in range(sum(counts[1:]) + (1 if lie == 6 else 0)):
        owner = name()
        rtype = TYPES[p.int(len(TYPES))]
        if rtype in (5, 39, 2):
            rdata = name()
        elif rtype == 6:
            rdata = name() + name() + p.take(20).ljust(20, b"\x00")
        elif rtype == 1:
            rdata = p.take(4)
        else:
            rdata = p.take(p.int(12))
        ttl = [300, 0, 0x80000000, 1, 86400 * 30][p.int(5)]
        msg += owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return bytes(msg)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 3
    if mode == 1:
        fuzz_upstream_reply(data[1:])
    elif mode == 2:
        fuzz_upstream_reply(structured_reply(data[1:]))
    else:
        fuzz_client_query(data[1:])


def seeds() -> list[bytes]:
    out = []
    for name, rdtype, edns in PRIMED + [("Www.Example.TEST.", "A", False), ("x.example.test.", "ANY", 0),
                                        ("medium.example.test.", "TXT", 0)]:
        client, reply = _response(name, rdtype, edns)
        out += [b"\x00" + client, b"\x01" + reply]
    out += [b"\x02" + bytes(range(i, i + 64)) for i in range(0, 192, 16)]
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        os.makedirs(sys.argv[2], exist_ok=True)
        for i, s in enumerate(seeds()):
            with open(os.path.join(sys.argv[2], f"seed-{i:02d}"), "wb") as f:
                f.write(s)
        sys.exit(0)
    if atheris is None:
        sys.exit("atheris is not installed (pip install atheris)")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
