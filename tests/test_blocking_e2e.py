"""Blocking end to end: real list files, a real `heimdall serve`, real DNS clients.

The upstream (NSD, tests/conftest.py) answers every *.bench.test name with
192.0.2.1 / 2001:db8::1, so any other answer proves the server blocked it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from heimdall_server import ROOT, HeimdallProcess
from tools.nsd import free_port

BLOCKLIST = """\
# hosts format, several names on a line, CRLF line end\r
0.0.0.0 ads.bench.test tracker.bench.test\r
127.0.0.1 Mixed.Case.bench.test
! ABP / AdGuard
||abp.bench.test^
@@||fine.abp.bench.test^
*.wild.bench.test
plain.bench.test
plain2.bench.test # inline comment
bad..name.bench.test
||with.options.bench.test^$third-party
http://a.path.bench.test/x
"""
BROKEN_LINES = (10, 11, 12)  # the three invalid lines above (1-based)

ALLOWLIST = """\
ok.ads.bench.test
"""


def write_lists(tmp_path: Path, block: str = BLOCKLIST, allow: str = ALLOWLIST) -> tuple[Path, Path]:
    b, a = tmp_path / "block.txt", tmp_path / "allow.txt"
    b.write_bytes(block.encode())
    a.write_text(allow)
    return b, a


def start(upstream, tmp_path: Path, **env: str) -> HeimdallProcess:
    b, a = write_lists(tmp_path)
    base = {"HEIMDALL_BLOCKLISTS": str(b), "HEIMDALL_ALLOWLIST": str(a)}
    base.update(env)
    return HeimdallProcess([upstream.addr], env=base)  # `with` starts it


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


BLOCKED = ["ads.bench.test", "tracker.bench.test", "sub.ads.bench.test", "ADS.Bench.Test",
           "mixed.case.bench.test", "abp.bench.test", "deep.x.abp.bench.test", "a.wild.bench.test",
           "plain.bench.test", "plain2.bench.test"]
NOT_BLOCKED = ["ok.ads.bench.test", "x.ok.ads.bench.test", "fine.abp.bench.test", "wild.bench.test",
               "other.bench.test", "bad..name.bench.test".replace("..", "."), "with.options.bench.test"]


@pytest.fixture(scope="module")
def zero_ip(upstream, tmp_path_factory):
    srv = start(upstream, tmp_path_factory.mktemp("zero")).start()
    yield srv
    srv.stop()


def test_every_format_blocks_and_allowlist_wins(zero_ip):
    for name in BLOCKED:
        for attempt in range(2):  # second time: from the cache (UDP fast path)
            r = zero_ip.query(name, "A")
            assert r.rcode() == dns.rcode.NOERROR and addresses(r) == ["0.0.0.0"], (name, attempt, r)
            assert r.question[0].name.to_text() == name.rstrip(".") + ".", "question echoed as sent (0x20)"
    for name in NOT_BLOCKED:
        r = zero_ip.query(name, "A")
        assert addresses(r) == ["192.0.2.1"], (name, r)


def test_broken_lines_are_logged_with_file_and_line_and_the_server_runs(zero_ip):
    log = zero_ip.log
    for lineno in BROKEN_LINES:
        assert f"block.txt:{lineno}: ignored invalid line" in log, log
    assert "3 invalid lines" in log, log


def test_zero_ip_aaaa_and_other_types(zero_ip):
    r = zero_ip.query("ads.bench.test", "AAAA")
    assert addresses(r) == ["::"]
    for _ in range(2):
        r = zero_ip.query("ads.bench.test", "MX")
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
        assert r.authority[0].ttl == 300


def test_tcp_and_edns_queries_are_blocked_too(zero_ip):
    assert addresses(zero_ip.query("ads.bench.test", "A", tcp=True)) == ["0.0.0.0"]
    r = zero_ip.query("tracker.bench.test", "A", use_edns=0, want_dnssec=True)
    assert addresses(r) == ["0.0.0.0"] and r.edns == 0


def test_nxdomain_mode_has_an_soa(upstream, tmp_path):
    with start(upstream, tmp_path, HEIMDALL_BLOCKING_MODE="nxdomain", HEIMDALL_BLOCKING_TTL="120") as srv:
        for name, qtype in (("ads.bench.test", "A"), ("sub.ads.bench.test", "AAAA"), ("abp.bench.test", "TXT")):
            for _ in range(2):
                r = srv.query(name, qtype)
                assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer, r
                soa = r.authority[0]
                assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 120 and soa[0].minimum == 120
        assert addresses(srv.query("ok.ads.bench.test")) == ["192.0.2.1"]


def test_refused_mode(upstream, tmp_path):
    with start(upstream, tmp_path, HEIMDALL_BLOCKING_MODE="refused") as srv:
        for _ in range(2):
            r = srv.query("a.wild.bench.test")
            assert r.rcode() == dns.rcode.REFUSED and not r.answer
        assert addresses(srv.query("wild.bench.test")) == ["192.0.2.1"]


def test_custom_ip_mode(upstream, tmp_path):
    with start(upstream, tmp_path, HEIMDALL_BLOCKING_MODE="custom_ip",
               HEIMDALL_BLOCKING_CUSTOM_IP="198.51.100.7,2001:db8::7") as srv:
        assert addresses(srv.query("ads.bench.test", "A")) == ["198.51.100.7"]
        assert addresses(srv.query("ads.bench.test", "AAAA")) == ["2001:db8::7"]
        r = srv.query("ads.bench.test", "MX")
        assert not r.answer and r.authority[0].rdtype == dns.rdatatype.SOA
    with start(upstream, tmp_path, HEIMDALL_BLOCKING_MODE="custom_ip",
               HEIMDALL_BLOCKING_CUSTOM_IP="198.51.100.8") as srv:
        assert addresses(srv.query("ads.bench.test", "A")) == ["198.51.100.8"]
        r = srv.query("ads.bench.test", "AAAA")  # no v6 configured: NODATA
        assert r.rcode() == dns.rcode.NOERROR and not r.answer


def wait_log(srv: HeimdallProcess, text: str, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while srv.log.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} not in log:\n{srv.log}"
        time.sleep(0.05)


def test_sighup_reload_blocks_a_cached_name_at_once(upstream, tmp_path):
    with start(upstream, tmp_path) as srv:
        for _ in range(3):
            assert addresses(srv.query("news.bench.test")) == ["192.0.2.1"]  # cached
        assert addresses(srv.query("ads.bench.test")) == ["0.0.0.0"]  # blocked answer cached
        write_lists(tmp_path, block="news.bench.test\n")
        srv.signal(signal.SIGHUP)
        wait_log(srv, "blocklists reloaded")
        assert addresses(srv.query("news.bench.test")) == ["0.0.0.0"]
        assert addresses(srv.query("sub.news.bench.test")) == ["0.0.0.0"]
        assert addresses(srv.query("ads.bench.test")) == ["192.0.2.1"]  # no longer listed: unblocked


def test_changed_mtime_reloads_with_an_interval(upstream, tmp_path):
    with start(upstream, tmp_path, HEIMDALL_BLOCKLIST_RELOAD_INTERVAL="0.2") as srv:
        assert addresses(srv.query("later.bench.test")) == ["192.0.2.1"]
        b, _ = write_lists(tmp_path, block=BLOCKLIST + "later.bench.test\n")
        st = os.stat(b)
        os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # coarse-mtime filesystems
        deadline = time.monotonic() + 5
        while addresses(srv.query("later.bench.test")) != ["0.0.0.0"]:
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.1)
        assert "blocklists reloaded" in srv.log
        assert addresses(srv.query("ads.bench.test")) == ["0.0.0.0"]


def test_failed_reload_keeps_the_old_lists(upstream, tmp_path):
    with start(upstream, tmp_path) as srv:
        assert addresses(srv.query("ads.bench.test")) == ["0.0.0.0"]
        (tmp_path / "block.txt").unlink()
        srv.signal(signal.SIGHUP)
        wait_log(srv, "blocklist reload failed")
        assert "block.txt" in srv.log.split("blocklist reload failed")[1].splitlines()[0]
        assert addresses(srv.query("ads.bench.test")) == ["0.0.0.0"]
        assert addresses(srv.query("tracker.bench.test")) == ["0.0.0.0"]
        assert addresses(srv.query("fresh.bench.test")) == ["192.0.2.1"]
        assert srv.proc.poll() is None


def test_every_worker_reloads(upstream, tmp_path):
    with start(upstream, tmp_path, HEIMDALL_WORKER_THREADS="2") as srv:
        # dnspython uses a fresh socket (new source port) per query: SO_REUSEPORT spreads them
        for _ in range(40):
            assert addresses(srv.query("cached2.bench.test")) == ["192.0.2.1"]
        write_lists(tmp_path, block="cached2.bench.test\n")
        srv.signal(signal.SIGHUP)
        wait_log(srv, "blocklists reloaded", count=2)
        pids = {line.split("]")[0] for line in srv.log.splitlines() if "blocklists reloaded" in line}
        assert len(pids) == 2, srv.log
        for _ in range(40):
            assert addresses(srv.query("cached2.bench.test")) == ["0.0.0.0"]


def run_serve(env: dict[str, str], upstream) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    full.update({"HEIMDALL_HTTP_BIND_ADDR": "disabled", "HEIMDALL_BIND_ADDR": f"127.0.0.1:{free_port()}"}, **env)
    return subprocess.run([sys.executable, "-m", "heimdall", "serve", "--upstream-servers", upstream.addr],
                          env=full, cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("env, status, words", [
    ({"HEIMDALL_BLOCKLISTS": "/nonexistent/list.txt"}, 3, "/nonexistent/list.txt"),
    ({"HEIMDALL_BLOCKING_MODE": "sinkhole"}, 2, "HEIMDALL_BLOCKING_MODE"),
    ({"HEIMDALL_BLOCKING_MODE": "custom_ip"}, 2, "HEIMDALL_BLOCKING_CUSTOM_IP"),
    ({"HEIMDALL_BLOCKING_MODE": "custom_ip", "HEIMDALL_BLOCKING_CUSTOM_IP": "nope"}, 2, "'nope'"),
    ({"HEIMDALL_BLOCKLIST_RELOAD_INTERVAL": "-1"}, 2, "HEIMDALL_BLOCKLIST_RELOAD_INTERVAL"),
])
def test_bad_blocking_config_is_one_line(upstream, env, status, words):
    r = run_serve(env, upstream)
    assert r.returncode == status, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and words in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_a_worker_restarted_after_a_reload_loads_the_current_lists(upstream, tmp_path):
    import psutil

    with start(upstream, tmp_path, HEIMDALL_WORKER_THREADS="2") as srv:
        write_lists(tmp_path, block="fresh2.bench.test\n")
        srv.signal(signal.SIGHUP)
        wait_log(srv, "blocklists reloaded", count=2)
        victim = min(c.pid for c in psutil.Process(srv.pid).children())
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            kids = {c.pid for c in psutil.Process(srv.pid).children()}
            if len(kids) == 2 and victim not in kids and srv.log.count("listening") >= 1:
                break
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.05)
        wait_log(srv, "reloading before serving")
        time.sleep(0.5)
        for _ in range(40):  # both workers, the new one included
            assert addresses(srv.query("fresh2.bench.test")) == ["0.0.0.0"], srv.log
            assert addresses(srv.query("ads.bench.test")) == ["192.0.2.1"]
