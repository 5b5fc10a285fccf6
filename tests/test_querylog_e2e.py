"""HEIMDALL_QUERY_LOG end to end: JSON lines for real queries, reopened on SIGHUP (log rotation)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import dns.rcode

from heimdall_server import HeimdallProcess


def read_lines(path: Path, want: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(ln) for ln in text.splitlines()]
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_one_json_line_per_query(upstream, tmp_path):
    qlog = tmp_path / "queries.jsonl"
    block = tmp_path / "block.txt"
    block.write_text("ads.bench.test\n")
    env = {"HEIMDALL_QUERY_LOG": str(qlog), "HEIMDALL_BLOCKLISTS": str(block)}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        assert srv.query("Log1.bench.test").answer          # miss
        assert srv.query("log1.bench.test").answer          # hit
        assert srv.query("ads.bench.test", "AAAA").answer   # blocked
        assert srv.query("ads.bench.test", "AAAA").answer   # blocked again (would be a fast-path hit)
        assert srv.query("log1.bench.test", tcp=True).answer
        assert srv.query("nx.example.test", "MX").rcode() == dns.rcode.NXDOMAIN
        lines = read_lines(qlog, 6)
    assert len(lines) == 6, lines
    miss, hit, blocked, blocked2, tcp, nx = lines
    assert miss["name"] == "Log1.bench.test." and miss["type"] == "A" and miss["rcode"] == "NOERROR"
    assert miss["cached"] is False and miss["blocked"] is False and miss["client"] == "127.0.0.1"
    assert miss["protocol"] == "udp" and miss["ms"] > 0 and miss["ts"] > time.time() - 60
    assert hit["cached"] is True and hit["blocked"] is False
    for b in (blocked, blocked2):
        assert b["name"] == "ads.bench.test." and b["type"] == "AAAA" and b["blocked"] is True
        assert b["cached"] is False
    assert tcp["protocol"] == "tcp"
    assert nx["rcode"] == "NXDOMAIN" and nx["type"] == "MX"


def test_sighup_reopens_the_log_after_rotation(upstream, tmp_path):
    qlog = tmp_path / "queries.jsonl"
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_QUERY_LOG": str(qlog)}) as srv:
        srv.query("before.bench.test")
        assert len(read_lines(qlog, 1)) == 1
        rotated = tmp_path / "queries.jsonl.1"
        qlog.rename(rotated)
        srv.signal(signal.SIGHUP)
        time.sleep(0.3)
        srv.query("after.bench.test")
        lines = read_lines(qlog, 1)
        assert [ln["name"] for ln in lines] == ["after.bench.test."]
        assert [ln["name"] for ln in read_lines(rotated, 1)] == ["before.bench.test."]


def test_unwritable_query_log_is_logged_not_fatal(upstream, tmp_path):
    env = {"HEIMDALL_QUERY_LOG": str(tmp_path / "missing-dir" / "q.jsonl")}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        for _ in range(3):
            assert srv.query("still.bench.test").answer  # answers keep flowing
        deadline = time.monotonic() + 5
        while "query log" not in srv.log and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "missing-dir" in srv.log and "Traceback" not in srv.log
