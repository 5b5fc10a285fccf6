"""Local records end to end: a hosts file and entries, a real `heimdall serve`, dnspython clients.

The upstream is the session's NSD (tests/conftest.py): it knows example.test
and bench.test and nothing under `lan`, so an answer for a `lan` name can
only have come from the local records, and an answer for example.test proves
that names outside the local zones still go upstream.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from closed_loop import ClosedLoop
from heimdall_server import HeimdallProcess

HOSTS = """\
# hosts format: address, name, aliases
192.0.2.50 printer.lan Printer-Alias.lan
2001:db8::5 nas.lan   # IPv6
192.0.2.60 deep.sub.lan
"""
ENTRIES = ['www.lan CNAME printer.lan', 'info.lan TXT "hello, world"', 'out.lan CNAME www.example.test',
           'mail.home.arpa MX 10 printer.lan']


def start(tmp_path: Path, upstream, hosts: str = HOSTS, entries=ENTRIES, **env: str) -> HeimdallProcess:
    path = tmp_path / "hosts"
    path.write_text(hosts)
    base = {"HEIMDALL_LOCAL_RECORDS": str(path), "HEIMDALL_LOCAL_ENTRIES": ",".join(entries),
            "HEIMDALL_LOCAL_ZONES": "lan,home.arpa"}
    base.update(env)
    return HeimdallProcess([upstream.addr], env=base)


def answers(r: dns.message.Message, rdtype: str) -> list[str]:
    kind = dns.rdatatype.from_text(rdtype)
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == kind for rd in rrset)


def soa_owner(r: dns.message.Message) -> str:
    soas = [rrset for rrset in r.authority if rrset.rdtype == dns.rdatatype.SOA]
    assert len(soas) == 1, r
    return soas[0].name.to_text()


@pytest.fixture
def local(tmp_path, upstream):
    with start(tmp_path, upstream) as srv:
        yield srv


@pytest.mark.parametrize("tcp", [False, True])
def test_local_names_are_answered_authoritatively_in_the_clients_case(local, tcp):
    r = local.query("PrInTeR.lan", "A", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert answers(r, "A") == ["192.0.2.50"] and r.answer[0].name.to_text() == "PrInTeR.lan."
    assert answers(local.query("printer-alias.lan", "A", tcp=tcp), "A") == ["192.0.2.50"]
    assert answers(local.query("nas.lan", "AAAA", tcp=tcp), "AAAA") == ["2001:db8::5"]
    txt = local.query("info.lan", "TXT", tcp=tcp)
    assert answers(txt, "TXT") == ['"hello, world"'] and txt.flags & dns.flags.AA
    mx = local.query("mail.home.arpa", "MX", tcp=tcp)
    assert answers(mx, "MX") == ["10 printer.lan."]


def test_a_cname_brings_the_local_targets_records(local):
    r = local.query("www.lan", "A")
    assert r.flags & dns.flags.AA
    assert answers(r, "CNAME") == ["printer.lan."] and answers(r, "A") == ["192.0.2.50"]
    r = local.query("www.lan", "CNAME")
    assert answers(r, "CNAME") == ["printer.lan."] and not answers(r, "A")
    out = local.query("out.lan", "A")  # a target outside the local data: the CNAME alone
    assert out.rcode() == dns.rcode.NOERROR and answers(out, "CNAME") == ["www.example.test."]
    assert not answers(out, "A")


def test_ptr_for_every_address_and_other_reverse_names_forwarded(local):
    r = local.query("50.2.0.192.in-addr.arpa", "PTR")
    assert r.flags & dns.flags.AA and answers(r, "PTR") == ["printer-alias.lan.", "printer.lan."]
    r6 = local.query(dns.reversename.from_address("2001:db8::5").to_text(), "PTR")
    assert answers(r6, "PTR") == ["nas.lan."]
    other = local.query("51.2.0.192.in-addr.arpa", "PTR")  # the upstream's (NSD has no such zone), not ours
    assert not other.flags & dns.flags.AA and not answers(other, "PTR")


def test_negative_answers_carry_the_zone_soa(local):
    nx = local.query("missing.lan", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA and soa_owner(nx) == "lan."
    soa = [rrset for rrset in nx.authority if rrset.rdtype == dns.rdatatype.SOA][0]
    assert soa.ttl == 60 and soa[0].minimum == 60
    assert local.query("x.y.home.arpa", "A").rcode() == dns.rcode.NXDOMAIN
    nodata = local.query("printer.lan", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and soa_owner(nodata) == "lan."
    ent = local.query("sub.lan", "A")  # exists: deep.sub.lan is below it (RFC 8020)
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer and soa_owner(ent) == "lan."
    apex = local.query("lan", "SOA")
    assert answers(apex, "SOA") and apex.flags & dns.flags.AA
    both = local.query("www.lan", "AAAA")  # the CNAME, then the target's NODATA
    assert answers(both, "CNAME") == ["printer.lan."] and soa_owner(both) == "lan."


def test_any_gets_every_record_of_the_name(local):
    r = local.query("printer.lan", "ANY")
    assert answers(r, "A") == ["192.0.2.50"] and r.flags & dns.flags.AA


def test_names_outside_the_local_zones_are_forwarded(local):
    r = local.query("www.example.test", "A")
    assert answers(r, "A") == ["192.0.2.10"] and not r.flags & dns.flags.AA
    assert local.query("nothing.example.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_repeated_local_answers_come_from_the_cache_unchanged(local):
    first = [local.query("printer.lan", "A") for _ in range(3)]
    assert all(answers(r, "A") == ["192.0.2.50"] and r.flags & dns.flags.AA for r in first)
    edns = local.query("printer.lan", "A", use_edns=0)
    assert edns.edns == 0 and answers(edns, "A") == ["192.0.2.50"]


def test_bad_local_records_stop_the_start_with_file_and_line(tmp_path, upstream):
    path = tmp_path / "hosts"
    path.write_text("192.0.2.1 ok.lan\n300.1.1.1 bad.lan\n")
    srv = HeimdallProcess([upstream.addr], env={"HEIMDALL_LOCAL_RECORDS": str(path)})
    with pytest.raises(RuntimeError):
        srv.start()
    assert f"{path}:2" in srv.log
    srv.stop()
    bad = HeimdallProcess([upstream.addr], env={"HEIMDALL_LOCAL_ENTRIES": "a.lan CNAME b.lan,a.lan A 192.0.2.1"})
    with pytest.raises(RuntimeError):
        bad.start()
    assert "CNAME must be alone" in bad.log
    bad.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_reloads_under_load_without_losing_a_query(tmp_path, upstream, workers):
    with start(tmp_path, upstream, HEIMDALL_WORKER_THREADS=workers) as srv:
        assert answers(srv.query("printer.lan"), "A") == ["192.0.2.50"]
        names = ["printer.lan", "www.lan", "missing.lan", "www.example.test"]
        with ClosedLoop(srv.address, srv.port, lambda c, s: (names[s % 4], names[s % 4]), clients=4,
                        gap=0.003) as load:
            time.sleep(0.5)
            (tmp_path / "hosts").write_text(HOSTS.replace("192.0.2.50", "192.0.2.99") + "192.0.2.7 new.lan\n")
            srv.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not all(answers(srv.query(name), "A") == [want] for name, want in
                          [("new.lan", "192.0.2.7"), ("printer.lan", "192.0.2.99")] * 4):
                assert time.monotonic() < deadline, srv.log
                time.sleep(0.05)
            time.sleep(0.5)
        recs = load.stop()
        assert len(recs) > 100 and not [r for r in recs if r.lost], f"{sum(r.lost for r in recs)} of {len(recs)} lost"
        after = [r for r in recs if r.name == "printer.lan" and r.sent > recs[-1].sent - 0.3]
        assert after and all(r.address == "192.0.2.99" for r in after)
        assert {r.rcode for r in recs if r.name == "missing.lan"} == {dns.rcode.NXDOMAIN}
        for _ in range(4):  # every worker: none serves the old cached answer
            assert answers(srv.query("printer.lan"), "A") == ["192.0.2.99"]
            assert answers(srv.query("www.lan"), "A") == ["192.0.2.99"]
        assert srv.stop() == 0
        assert "local records reloaded" in srv.log


def test_the_config_files_local_section_changes_live_on_sighup(tmp_path, upstream):
    conf = tmp_path / "h.toml"

    def write(address: str) -> None:
        conf.write_text(f'[upstream]\nupstream_servers = ["{upstream.addr}"]\n[local]\nlocal_zones = ["lan"]\n'
                        f'local_entries = ["printer.lan A {address}", "info.lan TXT \\"hello, world\\""]\n')

    write("192.0.2.50")
    with HeimdallProcess([], args=["--config", str(conf)]) as srv:
        assert answers(srv.query("printer.lan"), "A") == ["192.0.2.50"]
        assert answers(srv.query("info.lan", "TXT"), "TXT") == ['"hello, world"']
        write("192.0.2.51")
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while answers(srv.query("printer.lan"), "A") != ["192.0.2.51"]:
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.05)
        assert srv.stop() == 0
        assert "local_entries changed live" in srv.log, srv.log
