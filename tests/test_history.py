"""`heimdall-tools history` over real runs: bench twice and a check against a responder whose per-query
CPU cost we set, a small compare, the commit every result records, and the one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from targets.busy_responder import Responder
from tools.provenance import git_commit

ROOT = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, "-m", "tools.cli"]
COST_US = 40.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WINDOW = ["--scenarios", "cache-hit", "--duration", "1", "--warmup", "0.2"]


def tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def table(stdout: str) -> list[list[str]]:
    """The body rows of the rich table history prints."""
    return [[c.strip() for c in line.strip()[1:-1].split("│")] for line in stdout.splitlines() if line.startswith("│")]


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> str:
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Two benches and a check of one responder, in one results folder."""
    out = tmp_path_factory.mktemp("results")
    baseline = tmp_path_factory.mktemp("baseline") / "busy.json"
    with Responder(COST_US) as r:
        target = ["--server", r.server, "--pid", str(r.pid)]
        for _ in range(2):
            proc = tool("bench", *target, *WINDOW, "--results-dir", str(out))
            assert proc.returncode == 0, proc.stderr
        proc = tool("baseline", "create", "--output", str(baseline), *target, *WINDOW, "--repeats", "2",
                    "--probes", "none")
        assert proc.returncode == 0, proc.stderr
        proc = tool("check", "--max-regression", "10", "--baseline", str(baseline), *target,
                    "--results-dir", str(out))
        assert proc.returncode in (0, 1, 2), proc.stderr
    assert json.loads(baseline.read_text())["commit"] == git_commit()
    return out


def test_every_result_records_the_commit_and_the_machine(results):
    runs = sorted(p.name for p in results.iterdir() if p.is_dir())
    assert [name.split("-", 2)[2] for name in runs] == ["bench", "bench", "check"]
    docs = [json.loads((results / runs[0] / "bench.json").read_text()),
            json.loads((results / runs[2] / "run.json").read_text())]
    for doc in docs:
        assert doc["commit"] == git_commit() and doc["commit"]
        assert doc["fingerprint"]["cores"] == os.cpu_count() and "kernel" in doc["fingerprint"]


def test_history_follows_a_metric_across_runs_with_the_commit(results):
    proc = tool("history", "--metric", "cpu_us_per_query", "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)
    assert [r[1] for r in rows] == ["bench", "bench", "check"]
    dirs = sorted(p.name for p in results.iterdir() if p.is_dir())
    assert [r[0] for r in rows] == [d[:15] for d in dirs]   # the runs' UTC stamps, oldest first
    assert {r[2] for r in rows} == {git_commit()} and {r[3] for r in rows} == {"cache-hit"}
    values = [float(r[4]) for r in rows]
    assert all(0.7 * COST_US <= v < COST_US + 60 for v in values), values  # the responder's known cost
    assert rows[0][5] == ""
    for prev, cur, row in zip(values, values[1:], rows[1:]):
        assert float(row[5].rstrip("%")) == pytest.approx((cur - prev) / prev * 100, abs=0.15)
    png = results / "history-cpu_us_per_query.png"
    assert f"chart: {png}" in proc.stdout
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_history_png_path_and_scenario(results, tmp_path):
    png = tmp_path / "charts" / "qps.png"
    proc = tool("history", "--metric", "qps", "--scenario", "cache-hit", "--results-dir", str(results),
                "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    assert len(table(proc.stdout)) == 3 and all(float(r[4].replace(",", "")) > 0 for r in table(proc.stdout))
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_history_without_a_metric_lists_what_there_is(results):
    proc = tool("history", "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr
    listed = {r[0]: r for r in table(proc.stdout)}
    assert listed["cpu_us_per_query"][1:] == ["us", "cache-hit (3)"]
    assert listed["qps"][1:] == ["q/s", "cache-hit (3)"]
    assert "3 runs of 1 commit(s)" in proc.stdout
    assert not list(results.glob("history-qps*.png"))


def test_missing_or_empty_folder_is_one_line(tmp_path):
    one_line_error(tool("history", "--results-dir", str(tmp_path / "nowhere")), "no results folder")
    one_line_error(tool("history", "--results-dir", str(tmp_path)), "no runs with a recorded commit")


def test_unknown_metric_or_scenario_names_those_there_are(results):
    err = one_line_error(tool("history", "--metric", "speed", "--results-dir", str(results)), "unknown metric 'speed'")
    assert "cpu_us_per_query" in err and "qps" in err
    err = one_line_error(tool("history", "--metric", "mallocs_per_query", "--results-dir", str(results)),
                         "no run measured metric 'mallocs_per_query'")
    assert "cpu_us_per_query" in err
    one_line_error(tool("history", "--metric", "qps", "--scenario", "blocking", "--results-dir", str(results)),
                   "scenarios with it: cache-hit")
    one_line_error(tool("history", "--png", "x.png", "--results-dir", str(results)), "--png needs --metric")


def test_corrupt_files_are_skipped_with_a_warning(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    bench_dir = sorted(copy.glob("*-bench"))[0]
    (bench_dir / "bench.json").write_text('{"schema": "heimdall.bench/1", "comm')   # cut off mid-write
    (copy / "binary.json").write_bytes(b"\xff\xfe\x00")
    (copy / "list.json").write_text("[1, 2]")
    check_dir = next(copy.glob("*-check"))
    run = json.loads((check_dir / "run.json").read_text())
    run["scenarios"] = "not an object"
    (check_dir / "run.json").write_text(json.dumps(run))
    old = copy / "20250101-000000"   # a run made before results recorded their commit
    shutil.copytree(sorted(results.glob("*-bench"))[1], old)
    meta = json.loads((old / "bench.json").read_text())
    del meta["commit"]
    (old / "bench.json").write_text(json.dumps(meta))
    proc = tool("history", "--metric", "cpu_us_per_query", "--results-dir", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: skipped")]
    assert len(warnings) == 4, proc.stderr
    assert "not valid JSON" in proc.stderr and "not a JSON object" in proc.stderr
    assert "1 result(s)" in proc.stderr and "left out" in proc.stderr
    assert [r[1] for r in table(proc.stdout)] == ["bench"]


def test_git_commit_without_a_checkout_or_git(tmp_path, monkeypatch):
    expected = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
    assert git_commit() == expected
    assert git_commit(tmp_path) is None          # not a checkout: no commit, and no error
    monkeypatch.setenv("PATH", str(tmp_path))    # no git at all
    assert git_commit() is None


@pytest.mark.skipif(not (shutil.which("dnsperf") and (shutil.which("nsd") or os.path.exists("/usr/sbin/nsd"))),
                    reason="dnsperf and nsd are needed (scripts/setup.sh)")
def test_history_of_compare_runs(tmp_path):
    proc = tool("compare", "--peers", "none", "--rounds", "1", "--duration", "0.5", "--engines", "builtin",
                "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    run = next(tmp_path.iterdir())
    assert run.name.endswith("-compare")
    doc = json.loads((run / "compare.json").read_text())
    assert doc["commit"] == git_commit() and doc["fingerprint"]["cores"] == os.cpu_count()
    proc = tool("history", "--metric", "qps_builtin", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (row,) = table(proc.stdout)
    assert row[1:4] == ["compare", git_commit(), "heimdall"]
    assert float(row[4].replace(",", "")) == pytest.approx(doc["stats"]["heimdall"]["qps_builtin"]["median"], rel=1e-3)
