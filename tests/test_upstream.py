"""The local NSD upstream answers what its zones promise."""

import dns.message
import dns.query
import dns.rcode


def ask(up, name, rdtype="A", tcp=False):
    q = dns.message.make_query(name, rdtype)
    fn = dns.query.tcp if tcp else dns.query.udp
    return fn(q, up.address, port=up.port, timeout=2)


def test_wildcard_answers_any_bench_name(upstream):
    r = ask(upstream, "unique-123.bench.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer[0][0].address == "192.0.2.1"


def test_nxdomain_carries_soa(upstream):
    r = ask(upstream, "missing.example.test")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_big_txt_needs_tcp(upstream):
    udp = ask(upstream, "big.example.test", "TXT")
    assert udp.flags & dns.flags.TC
    tcp = ask(upstream, "big.example.test", "TXT", tcp=True)
    assert len(tcp.answer[0]) == 40
