"""`check --max-regression` against a real responder whose per-query CPU cost we set.

The acceptance runs, with the lab starting the target itself (`--server ADDR
-- COMMAND`, so it also counts instructions per query under callgrind): an
unchanged target passes, also with a busy neighbour on the other core, and
the same target made 15 % slower per query is a regression every time. The
timings alone (a running --server/--pid, which the lab cannot count) catch a
target twice as slow (a regression, or inconclusive when drift hides it in
the raw figure). Missing/corrupt baselines, a server that does not answer, a
vanished pid and a different probe set are exit 3 (4 for the pid) with one
line and no traceback. CI runs each acceptance check once, the unchanged
target beside a busy neighbour (its gating rows are counts, the same in every
run); HEIMDALL_ACCEPTANCE_RUNS=5 runs the full 5 out of 5, a neighbour in
every other run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_bcc
from targets.busy_responder import Responder
from targets.busy_responder import command as busy_command
from target_truth import cpu_us_per_answer, instructions_per_answer
from tools.nsd import free_port
from tools.reference import VERSION as REFERENCE_VERSION

ROOT = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, "-m", "tools.cli"]
RUNS = int(os.environ.get("HEIMDALL_ACCEPTANCE_RUNS", "1"))
COST_US = 50.0
# timings alone: the ratio of one check's CPU per query to the reference's has been seen 8-28 % off
# its true value, so a test holds them to a target twice as slow (docs/lab.md "What the gate catches
# here"); instruction counts do not drift, so they are held to the acceptance's 15 %
SLOWER_PCT = 100.0
COUNTED_SLOWER_PCT = 15.0
# reduced form of the default check: one scenario, 5 repeats of 1 s windows
LOAD = ["--scenarios", "cache-hit", "--duration", "1", "--warmup", "0.3", "--repeats", "5", "--probes", "none"]


def tool(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr
    assert needle in error_lines[0], error_lines[0]


def started(slower_pct: float = 0.0) -> list[str]:
    """--server and -- COMMAND: the lab starts the target (and a copy under callgrind) itself."""
    port = free_port()
    return ["--server", f"127.0.0.1:{port}", "--", *busy_command(port, COST_US, slower_pct)]


@pytest.fixture(scope="module")
def target():
    with Responder(COST_US) as r:
        yield r


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "busy.json"
    proc = tool("baseline", "create", "--output", str(path), *LOAD, *started())
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def external_baseline(target, tmp_path_factory) -> Path:
    """Made against the running `target` (--server/--pid): timings only, as checks of it measure."""
    path = tmp_path_factory.mktemp("baseline") / "external.json"
    proc = tool("baseline", "create", "--output", str(path), "--server", target.server, "--pid", str(target.pid),
                *LOAD)
    assert proc.returncode == 0, proc.stderr
    return path


def verdicts_of(results: Path) -> dict:
    runs = sorted(results.glob("*-check"))
    return json.loads((runs[-1] / "check.json").read_text()) if runs else {}


def check(baseline: Path, r: Responder, results: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = tool("check", "--max-regression", "10", "--baseline", str(baseline), "--server", r.server,
                "--pid", str(r.pid), "--results-dir", str(results), *extra)
    return proc, verdicts_of(results)


def check_started(baseline: Path, results: Path, slower_pct: float = 0.0) -> tuple[subprocess.CompletedProcess, dict]:
    proc = tool("check", "--max-regression", "10", "--baseline", str(baseline), "--results-dir", str(results),
                *started(slower_pct))
    return proc, verdicts_of(results)


def row(verdicts: dict, metric: str) -> dict:
    return [r for r in verdicts["rows"] if r["metric"] == metric][0]


def assert_only_timings_regress(proc: subprocess.CompletedProcess, verdicts: dict) -> None:
    """An unchanged running target, judged on timings: counted rows never regress, a timed row may
    on a busy machine (seen in CI: cpu_us_per_query beside the reference +13 % while the machine's
    rate fell by a third, and +42 % in another run), and then the exit status says so."""
    regressed = [r for r in verdicts["rows"] if r["verdict"] == "regression"]
    assert all(r["kind"] not in ("count", "work") for r in regressed), regressed
    assert proc.returncode == 1 if regressed else proc.returncode in (0, 2), proc.stdout


@contextlib.contextmanager
def busy_neighbour():
    """A process spinning on a core for as long as the block runs."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spin.kill()
        spin.wait()


def test_baseline_records_every_repeat(baseline):
    doc = json.loads(baseline.read_text())
    assert doc["schema"] == "heimdall.baseline/2"
    assert doc["probes"] == [] and doc["load"]["repeats"] == 5
    assert doc["reference"]["version"] == REFERENCE_VERSION
    cpu = doc["scenarios"]["cache-hit"]["cpu_us_per_query"]
    assert len(cpu["values"]) == 5 and cpu["better"] == "lower" and cpu["unit"] == "us"
    # against the responder's own cost, timed here: at least its work, at most a whole exchange with a
    # client (the responder's work and socket calls and the client's) with room for a busier minute
    work_us, exchange_us = cpu_us_per_answer(COST_US)
    assert 0.8 * work_us <= cpu["median"] <= 1.5 * exchange_us, (cpu["values"], work_us, exchange_us)
    qps = doc["scenarios"]["cache-hit"]["qps"]
    assert qps["better"] == "higher" and all(v > 0 for v in qps["values"])
    # timings beside the reference: one ratio per repeat, consistent with the raw figures
    for entry in (cpu, qps):
        assert len(entry["ratios"]) == len(entry["reference"]) == 5
        for value, ratio, ref in zip(entry["values"], entry["ratios"], entry["reference"]):
            assert ratio == pytest.approx(value / ref, rel=1e-3)
    assert "ratios" not in doc["scenarios"]["cache-hit"]["error_rate"]   # rates are not timings
    for key in ("cpu_model", "cores", "kernel", "python", "packages"):
        assert key in doc["fingerprint"]
    assert doc["target"]["kind"] == "command (started by the lab)"


def test_baseline_counts_instructions_per_query(baseline):
    """Counted under callgrind, one value per block: the same to well under 1 % every block, and what the
    responder's work costs counted apart from the lab, plus its receive and send (~2 % here)."""
    doc = json.loads(baseline.read_text())
    assert doc["instructions"]["tool"] == "valgrind callgrind"
    instr = doc["scenarios"]["cache-hit"]["instructions_per_query"]
    assert instr["kind"] == "work" and instr["unit"] == "instr/q" and len(instr["values"]) == 5
    truth = instructions_per_answer(COST_US)
    assert truth <= instr["median"] <= 1.05 * truth, (instr, truth)
    assert (max(instr["values"]) - min(instr["values"])) / instr["median"] < 0.01, instr


def test_unchanged_target_passes(baseline, tmp_path):
    """An unchanged target passes, exit 0 with every gating row "ok", in every run, also with a
    neighbour spinning on the other core (the first run and every second one after it). Where instructions are counted, the
    rows that gate are the counts and the error rate, which a busy machine cannot move; the
    timings are shown beside the reference and do not gate. The counts stay within 1 %."""
    for i in range(RUNS):
        with busy_neighbour() if i % 2 == 0 else contextlib.nullcontext():
            proc, v = check_started(baseline, tmp_path / f"run{i}")
        gating = {r["metric"]: r["verdict"] for r in v["rows"] if r["gate"]}
        assert "instructions_per_query" in gating and set(gating.values()) == {"ok"}, (gating, proc.stdout)
        instr = row(v, "instructions_per_query")
        assert instr["basis"] == "counted" and abs(instr["change_pct"]) < 1, instr
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_target_15_percent_slower_is_a_regression(baseline, tmp_path):
    """One more query's worth of work, send and receive every 100/15 queries: 15 % more instructions
    per query, a regression in every run whatever the timings say."""
    for i in range(RUNS):
        proc, v = check_started(baseline, tmp_path / f"run{i}", COUNTED_SLOWER_PCT)
        instr = row(v, "instructions_per_query")
        assert instr["verdict"] == "regression" and 10 < instr["change_pct"] < 20, instr
        assert proc.returncode == 1 and "instructions_per_query" in proc.stdout, proc.stdout


def test_target_twice_as_slow_is_caught(external_baseline, tmp_path):
    """The ratio to the reference shows the slowdown; the verdict is a regression when the raw
    figure agrees and the repeats are significant, else inconclusive: never a pass."""
    with Responder(COST_US, slower_pct=SLOWER_PCT) as slower:
        for i in range(RUNS):
            proc, v = check(external_baseline, slower, tmp_path / f"run{i}", "--json", str(tmp_path / f"verdict{i}.json"))
            assert json.loads((tmp_path / f"verdict{i}.json").read_text()) == v  # --json is check.json
            cost = row(v, "cpu_us_per_query")
            # past the 10 % threshold, by how much the drift decides: +34 % has been seen for this 2x target
            assert cost["basis"] == "paired" and 10 < cost["change_pct"] < 250, cost
            if cost["verdict"] == "regression":
                assert proc.returncode == 1 and "regression" in proc.stdout, proc.stdout
            else:
                assert cost["verdict"] == "inconclusive", cost
                assert proc.returncode == 2, proc.stdout + proc.stderr


def test_baseline_without_reference_is_judged_as_before(external_baseline, target, tmp_path):
    """A heimdall.baseline/1 document (no reference) is still read: timings judged as absolute figures."""
    doc = json.loads(external_baseline.read_text())
    doc["schema"], doc["reference"] = "heimdall.baseline/1", None
    for metrics in doc["scenarios"].values():
        for entry in metrics.values():
            for key in ("ratios", "reference", "ratio_median"):
                entry.pop(key, None)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    proc, v = check(old, target, tmp_path / "res")
    assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr
    assert "no reference measurements" in proc.stdout + proc.stderr
    assert {r["basis"] for r in v["rows"]} == {"absolute"}


def test_other_reference_program_is_exit_3(external_baseline, target, tmp_path):
    doc = json.loads(external_baseline.read_text())
    doc["reference"]["version"] = "0123456789ab"
    other = tmp_path / "other-ref.json"
    other.write_text(json.dumps(doc))
    proc = tool("check", "--max-regression", "10", "--baseline", str(other), "--server", target.server,
                "--pid", str(target.pid), "--results-dir", str(tmp_path / "res"))
    assert_one_line_error(proc, 3, "reference responder")


def test_other_machine_fingerprint_is_a_loud_warning(external_baseline, target, tmp_path):
    doc = json.loads(external_baseline.read_text())
    doc["fingerprint"]["kernel"] = "2.6.32-ancient"
    doc["fingerprint"]["cpu_model"] = "Some Other CPU"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    proc, v = check(other, target, tmp_path / "res")
    assert_only_timings_regress(proc, v)
    assert "WARNING" in proc.stderr and "2.6.32-ancient" in proc.stderr and "Some Other CPU" in proc.stderr
    assert any("kernel" in d for d in v["fingerprint_differences"])


def test_unwritable_baseline_output_fails_before_measuring(target, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = tool("baseline", "create", "--output", str(tmp_path / "file" / "b.json"), "--server", target.server,
                "--pid", str(target.pid), *LOAD, timeout=20)
    assert_one_line_error(proc, 3, "cannot")


def test_missing_baseline_is_exit_3(target, tmp_path):
    proc = tool("check", "--max-regression", "10", "--baseline", str(tmp_path / "nope.json"),
                "--server", target.server, "--pid", str(target.pid))
    assert_one_line_error(proc, 3, "no baseline")


@pytest.mark.parametrize("content, needle", [
    ('{"schema": "heimdall.baseline/1", "scenarios": {', "not valid JSON"),
    ('{"schema": "heimdall.baseline/1", "fingerprint": {}, "probes": [], "load": {}, "scenarios": {}}', "no scenarios"),
    ('[1, 2]', "not an object"),
    ('{"schema": "other/9"}', "schema"),
    ('\xff\xfe garbage', "baseline"),
])
def test_corrupt_baseline_is_exit_3(target, tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_bytes(content.encode("latin-1"))
    proc = tool("check", "--max-regression", "10", "--baseline", str(path),
                "--server", target.server, "--pid", str(target.pid))
    assert_one_line_error(proc, 3, needle)


def test_server_not_answering_is_exit_3(baseline):
    with Responder(drop=True) as silent:
        proc = tool("check", "--max-regression", "10", "--baseline", str(baseline),
                    "--server", silent.server, "--pid", str(silent.pid))
    assert_one_line_error(proc, 3, "not answering")


def test_gone_pid_is_exit_4(external_baseline, target):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    proc = tool("check", "--max-regression", "10", "--baseline", str(external_baseline),
                "--server", target.server, "--pid", str(dead.pid))
    assert_one_line_error(proc, 4, "does not exist")


def test_different_probe_set_is_exit_3(external_baseline, target):
    proc = tool("check", "--max-regression", "10", "--baseline", str(external_baseline), "--probes", "lockprof",
                "--server", target.server, "--pid", str(target.pid))
    assert_one_line_error(proc, 3, "probe set differs")


def test_bad_input_is_one_line(external_baseline, target):
    proc = tool("check", "--max-regression", "10", "--baseline", str(external_baseline), "--scenarios", "warp-speed",
                "--server", target.server, "--pid", str(target.pid))
    assert_one_line_error(proc, 3, "unknown scenario")
    proc = tool("check", "--max-regression", "10", "--baseline", str(external_baseline), "--server", "nohostport",
                "--pid", str(target.pid))
    assert_one_line_error(proc, 3, "HOST:PORT")


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("setpriv"), reason="needs root and setpriv")
def test_probes_unavailable_is_exit_3(target):
    """As an unprivileged user the futex probe cannot attach: one line naming the fix, exit 3."""
    import shutil
    import tempfile

    pub = tempfile.mkdtemp(prefix="heimdall-nobody-")
    os.chmod(pub, 0o777)
    try:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *TOOL, "baseline",
                               "create", "--output", os.path.join(pub, "b.json"), "--server", target.server,
                               "--pid", str(target.pid), "--scenarios", "cache-hit", "--duration", "1",
                               "--repeats", "1", "--probes", "lockprof"],
                              capture_output=True, text=True, timeout=120, cwd=pub)
        assert_one_line_error(proc, 3, "probes unavailable")
        assert not os.path.exists(os.path.join(pub, "b.json"))
    finally:
        shutil.rmtree(pub, ignore_errors=True)


@requires_bcc
def test_check_with_probes_judges_per_query_counts(target, tmp_path):
    """With the tracepoint probes, per-query counts join the table: the responder makes exactly
    one recvfrom and one sendto per answer, and never waits in futex."""
    path = tmp_path / "probed.json"
    load = [a if a != "none" else "lockprof,netprof" for a in LOAD]
    proc = tool("baseline", "create", "--output", str(path), "--server", target.server, "--pid", str(target.pid), *load)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    assert doc["probes"] == ["lockprof", "netprof"]
    sys_pq = doc["scenarios"]["cache-hit"]["syscalls_per_query"]
    assert sys_pq["kind"] == "count" and all(1.95 <= v <= 2.05 for v in sys_pq["values"]), sys_pq
    proc, v = check(path, target, tmp_path / "res")
    rows = {r["metric"]: r for r in v["rows"]}
    assert rows["syscalls_per_query"]["verdict"] == "ok" and rows["syscalls_per_query"]["kind"] == "count"
    assert rows["syscalls_per_query"]["threshold_pct"] == 3.0
    assert rows["futex_waits_per_query"]["verdict"] == "ok"
    assert_only_timings_regress(proc, v)


@pytest.mark.parametrize("args, needle", [
    (["--", sys.executable, "-c", "pass"], "--server"),                       # no address to measure
    (["--server", "127.0.0.1:9", "--pid", "1", "--", "true"], "no --pid"),     # both ways of naming a target
])
def test_command_target_usage_errors_are_exit_3(baseline, args, needle):
    proc = tool("check", "--max-regression", "10", "--baseline", str(baseline), *args, timeout=60)
    assert_one_line_error(proc, 3, needle)


def test_command_that_exits_is_exit_3(baseline):
    """A target command that dies at start: one line with its exit status, under callgrind or not."""
    proc = tool("check", "--max-regression", "10", "--baseline", str(baseline), "--server", "127.0.0.1:9",
                "--", sys.executable, "-c", "raise SystemExit(5)", timeout=120)
    assert_one_line_error(proc, 3, "status 5")
