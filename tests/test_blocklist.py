"""Blocklist parsing and matching on real files, and blocked answers parsed by dnspython."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall.blocklist import Blocklist, BlocklistError, load_blocklists, to_wire
from heimdall.blockresponse import BlockResponder, BlockResponseError, question_end

ROOT = Path(__file__).resolve().parent.parent

MIXED = (
    "# hosts-style header\r\n"
    "127.0.0.1 localhost\r\n"
    "::1 localhost ip6-localhost\r\n"
    "0.0.0.0 hosts-a.example hosts-b.example   # two names, inline comment\r\n"
    "127.0.0.1\tTAB.Hosts.Example\r\n"
    "\r\n"
    "plain.example\r\n"
    "Upper.Case.Example.\r\n"
    "! adblock comment\r\n"
    "[Adblock Plus 2.0]\r\n"
    "||abp.example^\r\n"
    "||abp-pipe.example^|\r\n"
    "@@||ok.plain.example^\r\n"
    "*.wild.example\r\n"
    "bücher.example\r\n"
)
# (line text, reason fragment) for lines that must be counted invalid
BROKEN = [
    ("bad_chars!.example", "invalid characters"),
    ("a..b.example", "empty label"),
    ("x" * 64 + ".example", "label longer than 63"),
    (".".join(["abcdefghi"] * 26), "longer than 253"),
    ("10.0.0.1", "IP address"),
    ("0.0.0.0 192.168.1.1", "IP address"),
    ("||tracker.example^$third-party", "unsupported adblock"),
    ("||tracker.example/path^", "unsupported adblock"),
    ("/ads[0-9]+/", "unsupported adblock"),
    ("example.com##.banner", "cosmetic"),
    ("two words", "several words"),
    ("*.bad*.example", "invalid characters"),
]


def write(path: Path, text: str) -> str:
    path.write_bytes(text.encode("utf-8"))
    return str(path)


@pytest.fixture()
def lists(tmp_path: Path) -> tuple[str, str, str]:
    block = write(tmp_path / "block.txt", MIXED)
    broken = write(tmp_path / "broken.txt", "ok-one.example\n" + "\n".join(t for t, _ in BROKEN) + "\nok-two.example\n")
    allow = write(tmp_path / "allow.txt", "# allow\n0.0.0.0 hosts-b.example\n||sub.abp.example^\n*.plain.example\n")
    return block, broken, allow


def test_every_format_blocks_its_names_and_subdomains(lists):
    block, _, _ = lists
    bl = load_blocklists([block])
    for name in ["hosts-a.example", "hosts-b.example", "tab.hosts.example", "plain.example",
                 "upper.case.example", "abp.example", "abp-pipe.example", "deep.sub.abp.example",
                 "x.wild.example", "xn--bcher-kva.example"]:
        assert bl.match_name(name), name
    for name in ["localhost", "ip6-localhost", "example", "wild.example", "notplain.example",
                 "ok.plain.example", "x.ok.plain.example", "abp.example.org"]:
        assert not bl.match_name(name), name
    assert bl.entries == 9
    assert bl.invalid_lines == 0


def test_matching_is_case_insensitive_via_lowercased_wire(lists):
    bl = load_blocklists([lists[0]])
    assert bl.match_name("WWW.Plain.EXAMPLE")
    assert bl.match(b"\x03www\x05plain\x07example\x00")
    assert not bl.match(b"\x00")


def test_invalid_lines_are_counted_and_logged_with_file_and_line(lists, caplog):
    _, broken, _ = lists
    with caplog.at_level(logging.WARNING, logger="heimdall.blocklist"):
        bl = load_blocklists([broken])
    assert bl.invalid_lines == len(BROKEN)
    assert bl.match_name("ok-one.example") and bl.match_name("ok-two.example")
    assert not bl.match_name("tracker.example") and not bl.match_name("example.com")
    text = caplog.text
    for i, (line, reason) in enumerate(BROKEN):
        assert f"{broken}:{i + 2}: ignored invalid line" in text
        sample = bl.invalid_samples[i]
        assert (sample.lineno, reason in sample.reason) == (i + 2, True), (sample, reason)


def test_many_invalid_lines_log_a_count_after_the_first_ones(tmp_path, caplog):
    path = write(tmp_path / "junk.txt", "\n".join(f"junk line {i}" for i in range(500)) + "\nfine.example\n")
    with caplog.at_level(logging.WARNING, logger="heimdall.blocklist"):
        bl = load_blocklists([path])
    assert bl.invalid_lines == 500 and bl.entries == 1
    assert caplog.text.count("ignored invalid line") == 20
    assert "480 more invalid lines ignored" in caplog.text


def test_allowlist_wins_over_blocks_and_covers_subdomains(lists):
    block, _, allow = lists
    bl = load_blocklists([block], [allow])
    assert not bl.match_name("hosts-b.example")       # exact allow
    assert bl.match_name("hosts-a.example")
    assert bl.match_name("abp.example")               # parent still blocked
    assert not bl.match_name("sub.abp.example")        # allowed child of a blocked name
    assert not bl.match_name("a.sub.abp.example")
    assert bl.match_name("plain.example")              # *.plain.example allows children only
    assert not bl.match_name("www.plain.example")
    assert bl.allow_entries == 4  # three from the allowlist, one @@ rule from the blocklist


def test_wildcard_blocks_strict_subdomains_only():
    bl = Blocklist.from_names(["*.w.example", "p.example"], [])
    assert bl.match_name("a.w.example") and bl.match_name("b.a.w.example")
    assert not bl.match_name("w.example")
    bl2 = Blocklist.from_names(["*.p.example", "example"], [])
    assert bl2.match_name("p.example")  # not the wildcard, but its parent "example" is blocked


def test_unreadable_file_raises_a_clear_error(tmp_path, lists):
    with pytest.raises(BlocklistError, match="missing.txt"):
        load_blocklists([lists[0], str(tmp_path / "missing.txt")])
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(BlocklistError, match="adir"):
        load_blocklists([str(d)])


def test_sources_record_mtimes_and_changed_detects_edits(tmp_path):
    path = tmp_path / "l.txt"
    write(path, "a.example\n")
    bl = load_blocklists([str(path)])
    assert [s.path for s in bl.sources] == [str(path)] and bl.sources[0].kind == "block"
    assert not bl.changed()
    write(path, "a.example\nb.example\n")
    os.utime(path, ns=(bl.sources[0].mtime_ns + 10**9, bl.sources[0].mtime_ns + 10**9))
    assert bl.changed()
    assert load_blocklists([str(path)]).match_name("b.example")
    path.unlink()
    assert bl.changed()


def test_to_wire():
    assert to_wire("www.example.com") == b"\x03www\x07example\x03com\x00"
    assert to_wire("example.") == b"\x07example\x00"


# ----- block responses --------------------------------------------------------

def query(name: str, rdtype: str, edns: bool, qid: int = 4242) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    q.id = qid
    return q.to_wire()


@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize("mode,rdtype,rcode,answer", [
    ("zero_ip", "A", "NOERROR", "0.0.0.0"),
    ("zero_ip", "AAAA", "NOERROR", "::"),
    ("zero_ip", "MX", "NOERROR", None),
    ("nxdomain", "A", "NXDOMAIN", None),
    ("nxdomain", "TXT", "NXDOMAIN", None),
    ("refused", "A", "REFUSED", None),
    ("custom_ip", "A", "NOERROR", "192.0.2.99"),
    ("custom_ip", "AAAA", "NOERROR", "2001:db8::99"),
    ("custom_ip", "TXT", "NOERROR", None),
])
def test_block_response_in_each_mode(mode, rdtype, rcode, answer, edns):
    r = BlockResponder(mode, ttl=123, custom_ip="192.0.2.99, 2001:db8::99")
    q = query("Ads.EXAMPLE.com", rdtype, edns)
    wire = r.respond(q)
    m = dns.message.from_wire(wire)
    assert m.id == 4242
    assert m.flags & dns.flags.QR and m.flags & dns.flags.RD and m.flags & dns.flags.RA
    assert dns.rcode.to_text(m.rcode()) == rcode
    assert wire[12:12 + len("Ads.EXAMPLE.com") + 2] == q[12:12 + len("Ads.EXAMPLE.com") + 2]  # 0x20 case kept
    assert str(m.question[0].name) == "Ads.EXAMPLE.com."
    assert (m.edns >= 0) == edns
    if answer:
        assert len(m.answer) == 1 and m.answer[0].ttl == 123
        assert m.answer[0].rdtype == dns.rdatatype.from_text(rdtype)
        assert m.answer[0][0].address == answer
        assert not m.authority
    else:
        assert not m.answer
        if mode == "refused":
            assert not m.authority
        else:
            soa = m.authority[0]
            assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 123 and soa[0].minimum == 123
            assert soa.name == m.question[0].name


def test_custom_ip_with_only_v4_gives_nodata_for_aaaa():
    r = BlockResponder("custom_ip", ttl=60, custom_ip="192.0.2.7")
    m = dns.message.from_wire(r.respond(query("x.example", "AAAA", False)))
    assert m.rcode() == 0 and not m.answer and m.authority[0].rdtype == dns.rdatatype.SOA


def test_rd_clear_is_copied_and_malformed_queries_are_refused_politely():
    r = BlockResponder()
    q = dns.message.make_query("x.example", "A")
    q.flags &= ~dns.flags.RD
    m = dns.message.from_wire(r.respond(q.to_wire()))
    assert not m.flags & dns.flags.RD
    assert r.respond(b"\x00" * 11) is None
    assert r.respond(q.to_wire()[:20]) is None
    assert question_end(q.to_wire()) == 12 + 11 + 4


def test_bad_blocking_config_is_rejected():
    with pytest.raises(BlockResponseError):
        BlockResponder("sinkhole")
    with pytest.raises(BlockResponseError):
        BlockResponder("custom_ip", custom_ip="")
    with pytest.raises(BlockResponseError):
        BlockResponder("custom_ip", custom_ip="not-an-ip")


# ----- one million domains ----------------------------------------------------

MEASURE = r"""
import json, resource, sys, time, psutil
t, c = time.perf_counter(), time.process_time()
from heimdall.blocklist import load_blocklists, to_wire
bl = load_blocklists([sys.argv[1]])
load_s, cpu_s = time.perf_counter() - t, time.process_time() - c
sys.path.insert(0, sys.argv[2])
from gen_blocklist import name
hits = sum(bl.match(to_wire(name(i))) for i in range(0, 1_000_000, 1000))
print(json.dumps({"entries": bl.entries, "load_s": load_s, "cpu_s": cpu_s, "hits": hits,
                  "miss": bl.match(to_wire("www.not-listed.example")),
                  "rss_mb": psutil.Process().memory_info().rss / 2**20,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow
def test_one_million_domains_load_fast_and_small(tmp_path):
    path = tmp_path / "block-1m.txt"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_blocklist.py"), str(path), "-n", "1000000"], check=True)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(ROOT / "scripts")],
                         check=True, capture_output=True, text=True, cwd=ROOT, timeout=120)
    r = json.loads(out.stdout)
    print(r)
    assert r["entries"] == 1_000_000 and r["hits"] == 1000 and r["miss"] is False
    # The 10 s budget is CPU time: wall time on a shared 2-core machine also counts other
    # engineers' jobs (about 3.5 s wall when idle, 9 s at load average 6).
    assert r["cpu_s"] < 10
    assert r["rss_mb"] < 300 and r["peak_mb"] < 300   # resident now, and at the peak of the build


def test_single_label_entries_still_match_when_present():
    assert Blocklist.from_names(["com"]).match_name("a.b.com")
    assert Blocklist.from_names(["*.test"]).match_name("x.test")
    assert not Blocklist.from_names(["*.test"]).match_name("test")
    two = Blocklist.from_names(["b.com"])
    assert two.match_name("a.b.com") and not two.match_name("com") and not two.match_name("c.com")
    assert not two.match(b"\x00") and not two.match(b"\x05ab")  # root and a truncated name


@pytest.mark.parametrize("names", [["ads.example"], ["example", "ads.example"]])
def test_match_agrees_with_a_plain_suffix_check(names):
    """The wire walk against the obvious definition, over many shapes of names."""
    bl = Blocklist.from_names(names)
    listed = set(names)
    for q in ["ads.example", "x.ads.example", "a.b.c.ads.example", "example", "ads.example.org",
              "xads.example", "ads.examplex", "www.example", "a.b.c.d.e.f.g.h", "e"]:
        labels = q.split(".")
        expect = any(".".join(labels[i:]) in listed for i in range(len(labels)))
        assert bl.match_name(q) == expect, (names, q)


def test_manager_reload_swaps_lists_and_keeps_old_ones_on_failure(tmp_path, caplog):
    from heimdall.blocklist import BlocklistManager
    path = tmp_path / "l.txt"
    write(path, "old.example\n")
    mgr = BlocklistManager([str(path)])
    first = mgr.load()
    assert first.match_name("old.example")
    assert not mgr.reload_if_changed()                      # nothing changed
    write(path, "new.example\n")
    os.utime(path, ns=(first.sources[0].mtime_ns + 10**9,) * 2)
    assert mgr.reload_if_changed()
    assert mgr.current.match_name("new.example") and not mgr.current.match_name("old.example")
    kept = mgr.current
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="heimdall.blocklist"):
        assert not mgr.reload()
    assert mgr.current is kept and "l.txt" in mgr.last_error
    assert "blocklist reload failed, keeping the 1 entries" in caplog.text


names = st.lists(st.sampled_from(["a", "b", "ads", "x-y", "c0", "_t"]), min_size=1, max_size=5).map(".".join)


@settings(max_examples=300, deadline=None)
@given(block=st.lists(st.tuples(st.booleans(), names), max_size=6),
       allow=st.lists(st.tuples(st.booleans(), names), max_size=3), query=names)
def test_match_agrees_with_the_definition(block, allow, query):
    """Property: blocked iff some block rule covers the name and no allow rule does."""
    def covers(rules, q):
        labels = q.split(".")
        for wild, n in rules:
            for i in range(len(labels)):
                if ".".join(labels[i:]) == n and (i > 0 or not wild):
                    return True
        return False
    bl = Blocklist.from_names([("*." if w else "") + n for w, n in block],
                              [("*." if w else "") + n for w, n in allow])
    assert bl.match_name(query) == (covers(block, query) and not covers(allow, query))
