"""`heimdall-tools compare`: real peers briefly, consistent JSON/PNG/markdown, ratios from the data."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tools.sidebyside import contestants as procs
from tools.sidebyside.contestants import Contestant
from tools.sidebyside.markdown import render_markdown, write_report
from tools.sidebyside.options import CompareOptions
from tools.sidebyside.run import SCHEMA, build_report, run_compare, start_all
from tools.sidebyside.stats import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake(name: str, kind: str, qps: list[float], p99: list[float]) -> Contestant:
    c = Contestant(name, kind, "127.0.0.1:1", 1, 1)
    c.rounds = [{"qps_dnsperf": q, "p99_us_builtin": p, "cpu_pct_per_10k": 10.0, "rss_mb": 40.0}
                for q, p in zip(qps, p99)]
    return c


def test_ratios_are_medians_of_the_rounds():
    h = _fake("heimdall", "heimdall", [60_000, 40_000, 50_000], [80, 90, 70])
    u = _fake("unbound", "unbound", [100_000, 50_000, 80_000], [50, 60, 100])
    stats, ratios = summarize([h, u])
    assert stats["heimdall"]["qps_dnsperf"]["median"] == 50_000
    assert stats["unbound"]["qps_dnsperf"] == {"median": 80_000, "min": 50_000, "max": 100_000, "n": 3,
                                               "values": [100_000, 50_000, 80_000]}
    r = ratios["unbound"]["qps_dnsperf"]
    assert r["ratio_of_medians"] == round(50_000 / 80_000, 3)
    per_round = [0.6, 0.8, 0.625]
    assert r["per_round"]["median"] == round(statistics.median(per_round), 3)
    assert r["per_round"]["min"] == 0.6 and r["per_round"]["max"] == 0.8
    assert ratios["unbound"]["qps_builtin"] is None  # not measured: no ratio invented


def test_goals_judge_the_measured_values(tmp_path):
    h = _fake("heimdall", "heimdall", [60_000] * 3, [80] * 3)
    u = _fake("unbound", "unbound", [100_000] * 3, [50] * 3)
    h.extra["concurrency"] = [{"clients": 1000, "sent": 100, "received": 100, "timeouts": 0, "lost": 0,
                               "qps": 1.0, "p99_us": 1.0}]
    h.extra["fill"] = {"names": 1_000_000, "answered": 1_000_000, "rss_before_mb": 40.0, "rss_after_mb": 340.0,
                       "bytes_per_entry": 300.0}
    report = build_report(CompareOptions(rounds=3), [h, u], [{"peer": "dnsmasq", "why": "not installed"}], 0)
    g = {row["goal"]: row for row in report["goals"]}
    assert g["cached throughput > 50,000 q/s"]["pass"] is True
    assert g["cached throughput >= 0.75x unbound"]["pass"] is False          # 0.6x
    assert g["cached throughput >= 0.9x dnsmasq"]["pass"] is None            # not measured
    assert g["cache-hit p99 at 10,000 q/s offered < 100 us"]["pass"] is True
    assert g["cache-hit p99 <= 1.3x Unbound's (built-in)"]["pass"] is False  # 1.6x
    assert g["1,000 concurrent clients without loss"]["pass"] is True
    assert g["1M cached entries < 400 MB resident"]["pass"] is True
    assert g["CPU at 10,000 q/s < 20% of a core"]["pass"] is True
    md = render_markdown(report)
    assert "skipped dnsmasq: not installed" in md and "| FAIL |" in md
    write_report(report, tmp_path)
    assert (tmp_path / "compare.png").read_bytes().startswith(PNG_MAGIC)
    assert json.loads((tmp_path / "compare.json").read_text())["schema"] == SCHEMA


def running_programs() -> set[str]:
    """The program names of this process's descendants, now."""
    import psutil

    names = set()
    for child in psutil.Process().children(recursive=True):
        try:
            names.add(os.path.basename(child.exe()))
        except psutil.Error:
            pass
    return names


def test_compare_against_real_peers_and_an_external_server(tmp_path):
    """Unbound and dnsmasq for real (seen running during the rounds), a Heimdall variant, the bare uvloop
    floor, and a running Heimdall given by address and pid; every started server is gone afterwards."""
    from tools.nsd import LocalUpstream
    from tools.peers import HeimdallServer

    seen: set[str] = set()

    def say(message: str) -> None:
        if message.startswith("round 1/"):
            seen.update(running_programs())

    with LocalUpstream() as up, HeimdallServer(up.addr) as ext:
        opts = CompareOptions(peers=["unbound", "dnsmasq"], rounds=2, duration=0.6, warm_set=200,
                              servers=[f"ext={ext.addr}"], pids=[ext.pid], concurrency=[50], bare=True,
                              variants={"h-off": {"HEIMDALL_UDP_BATCH": "off"}},
                              results_dir=tmp_path)
        report = run_compare(opts, say=say)
    assert {"unbound", "dnsmasq"} <= seen, seen
    out = tmp_path / next(p.name for p in tmp_path.iterdir())
    assert out.name.endswith("-compare")
    assert (out / "compare.png").read_bytes().startswith(PNG_MAGIC)
    data = json.loads((out / "compare.json").read_text())
    names = [c["name"] for c in data["contestants"]]
    assert names == ["heimdall", "unbound", "dnsmasq", "h-off", "bare-uvloop", "ext"]
    assert data["skipped"] == []
    kinds = {c["name"]: c["kind"] for c in data["contestants"]}
    assert kinds["unbound"] == "unbound" and kinds["dnsmasq"] == "dnsmasq"
    for c in data["contestants"]:
        assert [r["round"] for r in c["rounds"]] == [1, 2]
        assert c["primed"]["answered"] == 200
        for r in c["rounds"]:
            assert r["qps_dnsperf"] > 0 and r["qps_builtin"] > 0
            assert r["p50_us_builtin"] <= r["p99_us_builtin"] and r["p50_us_dnsperf"] <= r["p99_us_dnsperf"]
            assert r["cpu_pct_per_10k"] > 0 and r["rss_mb"] > 1
        assert c["concurrency"][0]["clients"] == 50 and c["concurrency"][0]["received"] > 0
    for name in names[1:]:  # every ratio is the quotient of the medians the JSON reports
        for m, r in data["ratios_to_heimdall"][name].items():
            if m in ("qps_miss", "cpu_us_per_miss", "qps_mixed", "cpu_us_per_query_mixed"):
                assert r is None and data["stats"][name][m] is None  # not asked for: no figure, no ratio
                continue
            a, b = data["stats"]["heimdall"][m]["median"], data["stats"][name][m]["median"]
            assert r["ratio_of_medians"] == pytest.approx(a / b, abs=1e-3)
            assert data["stats"][name][m]["median"] == pytest.approx(
                statistics.median(rr[m] for rr in next(c for c in data["contestants"] if c["name"] == name)["rounds"]),
                abs=1e-3)
    assert report["results_dir"] == str(out)
    import psutil
    for c in data["contestants"]:
        if c["name"] != "ext":
            assert not psutil.pid_exists(c["pid"]) or psutil.Process(c["pid"]).status() == psutil.STATUS_ZOMBIE
    assert (out / "compare.md").read_text() == render_markdown(data)


def test_a_peer_not_installed_is_skipped_with_the_fix(monkeypatch):
    """The not-installed path on its own: the peer is listed as skipped, Heimdall still starts."""
    real_installed = procs.installed
    monkeypatch.setattr(procs, "installed", lambda kind: kind != "dnsmasq" and real_installed(kind))
    contestants: list[Contestant] = []
    skipped: list[dict] = []
    try:
        start_all(CompareOptions(peers=["dnsmasq"]), "127.0.0.1:9", contestants, skipped, say=lambda m: None)
    finally:
        for c in contestants:
            c.server.stop()
    assert [c.name for c in contestants] == ["heimdall"]
    assert skipped == [{"peer": "dnsmasq", "why": "dnsmasq is not installed (scripts/setup.sh installs it)"}]


def test_cli_is_registered():
    out = subprocess.run([sys.executable, "-m", "tools.cli", "compare", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--peers" in out.stdout and "--server" in out.stdout


def test_a_variant_can_run_another_checkout(tmp_path):
    """PYTHONPATH=DIR in a --variant runs the Heimdall found there: an A/B of two builds."""
    other = tmp_path / "other"
    shutil.copytree(Path(__file__).resolve().parents[1] / "heimdall", other / "heimdall",
                    ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "ran-from-other"
    main = other / "heimdall" / "__main__.py"
    main.write_text(f"open({str(marker)!r}, 'w').close()\n" + main.read_text())
    cli = [sys.executable, "-m", "tools.cli", "compare", "--peers", "none", "--rounds", "1",
           "--duration", "0.5", "--engines", "dnsperf", "--results-dir", str(tmp_path / "res")]
    bad = subprocess.run([*cli, "--variant", f"x:PYTHONPATH={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 3 and "not a Heimdall checkout" in bad.stderr and "Traceback" not in bad.stderr
    assert not marker.exists()
    if shutil.which("dnsperf") is None:
        pytest.skip("dnsperf not installed")
    ok = subprocess.run([*cli, "--variant", f"other:PYTHONPATH={other}"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert marker.exists()
    results = Path(ok.stdout.strip().splitlines()[-1].removeprefix("results: "))
    report = json.loads((results / "compare.json").read_text())
    assert [c["name"] for c in report["contestants"]] == ["heimdall", "other"]
    assert "not built there" not in ok.stderr  # the copy has the compiled hot path too


def test_miss_and_mixed_name_files_never_repeat_a_new_name(tmp_path):
    from tools.sidebyside.workloads import miss_file, mixed_file, warm_file

    warm = warm_file(tmp_path / "warm.txt", 10)
    hot = set(warm.read_text().splitlines())
    r1 = miss_file(tmp_path / "m1.txt", "r1-heimdall", 1000).read_text().splitlines()
    r2 = miss_file(tmp_path / "m2.txt", "r2-heimdall", 1000).read_text().splitlines()
    assert len(set(r1)) == 1000 and not set(r1) & set(r2)  # unique within a round and across rounds
    mixed = mixed_file(tmp_path / "x.txt", "r1-heimdall", 1000, warm).read_text().splitlines()
    new = [line for line in mixed if line not in hot]
    assert len(new) == 200 and len(set(new)) == 200  # one in five is a name no one asked before


@pytest.mark.skipif(not (shutil.which("dnsperf") and (shutil.which("nsd") or os.path.exists("/usr/sbin/nsd"))),
                    reason="needs dnsperf and nsd (scripts/setup.sh)")
def test_miss_and_mixed_workloads_measure_throughput_and_cpu_per_query(tmp_path):
    """Heimdall, PowerDNS Recursor and dnsdist (with its packet cache) forward every miss to the same NSD,
    whose own CPU is read beside each window."""
    opts = CompareOptions(peers=["pdns-recursor", "dnsdist"], rounds=1, duration=0.6, engines=("dnsperf",),
                          workloads=("miss", "mixed"), results_dir=tmp_path)
    report = run_compare(opts, say=lambda m: None)
    assert [c["name"] for c in report["contestants"]] == ["heimdall", "pdns-recursor", "dnsdist"]
    for c in report["contestants"]:
        for r in c["rounds"]:
            assert r["qps_miss"] > 0 and r["cpu_us_per_miss"] > 0, (c["name"], r)
            assert r["qps_mixed"] > 0 and r["cpu_us_per_query_mixed"] > 0, (c["name"], r)
            assert r["lost_miss"] <= 0.01 * r["qps_miss"], (c["name"], r)
            assert 0 < r["upstream_cpu_pct_miss"] < 200, (c["name"], r)  # NSD answered every miss itself
    rounds = report["contestants"][0]["rounds"]
    # a miss goes upstream and a mixed query mostly does not: per query, misses cost more
    miss = statistics.median(r["cpu_us_per_miss"] for r in rounds)
    mixed = statistics.median(r["cpu_us_per_query_mixed"] for r in rounds)
    assert miss > mixed
    md = (Path(report["results_dir"]) / "compare.md").read_text()
    assert "cache-miss throughput" in md and "cache-hit throughput, built-in" not in md  # unmeasured rows left out


def test_bad_workloads_are_a_one_line_error():
    out = subprocess.run([sys.executable, "-m", "tools.cli", "compare", "--workloads", "hit,typo"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert "bad --workloads 'hit,typo'" in out.stderr and "Traceback" not in out.stderr
