"""CNAME cloaking: an allowed name whose answer's CNAME chain passes through a blocked name is blocked."""

from __future__ import annotations

import time

import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall import wire
from heimdall_server import HeimdallProcess
from test_http_e2e import free_tcp_port, scrape, total

label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
names = st.lists(label, min_size=1, max_size=4).map(lambda ls: ".".join(ls) + ".")


@given(st.lists(names, min_size=1, max_size=6))
def test_cname_targets_agree_with_dnspython(chain):
    """A chain q -> t1 -> t2 ... as an upstream would send it (compressed by dnspython)."""
    q = dns.message.make_query("start.example.", "A")
    r = dns.message.make_response(q)
    owner = "start.example."
    for target in chain:
        r.answer.append(dns.rrset.from_text(owner, 60, "IN", "CNAME", target))
        owner = target
    r.answer.append(dns.rrset.from_text(owner, 60, "IN", "A", "192.0.2.1"))
    got = wire.cname_targets(r.to_wire())
    assert got == [dns.name.from_text(t).to_wire().lower() for t in chain]


@pytest.mark.parametrize("bad", [
    b"\xc0\x1e",            # a pointer forwards (to itself)
    b"\x03www\xc0\x1c",     # a pointer into its own name: a loop
    b"\x3fabc",             # a label longer than what is left
])
def test_read_name_refuses_loops_and_overruns(bad):
    msg = bytes(12) + b"\x00\x00\x01\x00\x01" + bad + bytes(4)
    with pytest.raises(wire.WireError):
        wire.read_name(msg, 17)


def serve(upstream, tmp_path, **env):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("www.example.test\n")
    hp = free_tcp_port()
    return HeimdallProcess([upstream.addr], env={"HEIMDALL_BLOCKLISTS": str(blocklist), "HEIMDALL_BLOCKING_MODE": "nxdomain",
                                                 "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", **env}), hp


def test_an_alias_of_a_blocked_name_is_blocked_and_cached_so(upstream, tmp_path):
    proc, hp = serve(upstream, tmp_path)
    with proc as srv:
        for _ in range(3):  # the first resolves and blocks, the others come from the cache (hot path)
            r = srv.query("alias.example.test")
            assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer, r
        assert srv.query("ns1.example.test").rcode() == dns.rcode.NOERROR  # no CNAME: untouched
        deadline = time.monotonic() + 10  # the figures refresh about once a second
        while total(m := scrape(hp), "heimdall_blocked_cname_cloaking_total") < 1:
            assert time.monotonic() < deadline, m
            time.sleep(0.2)
        assert total(m, "heimdall_blocked_cname_cloaking_total") == 1, m  # resolved once, then cached
        assert total(m, "heimdall_blocked_queries_total") >= 3


def test_cloaking_can_be_turned_off(upstream, tmp_path):
    proc, _ = serve(upstream, tmp_path, HEIMDALL_CNAME_CLOAKING="false")
    with proc as srv:
        r = srv.query("alias.example.test")
        assert r.rcode() == dns.rcode.NOERROR and [rr.rdtype for rr in r.answer] == [5, 1], r
