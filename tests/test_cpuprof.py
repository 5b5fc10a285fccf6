"""cpuprof against Python targets whose truth is known.

* hot_cold.py spends ~80 % of its CPU in hot_loop() and ~20 % in cold_loop()
  and measures the split itself (thread_time around each call): py-spy's
  self share of hot_loop must match it.
* kernel_heavy.py copies /dev/zero, so nearly all on-CPU samples are in the
  kernel, while hot_cold.py's are nearly all in user space (--native).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import requires_bcc

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "probes" / "targets"
CLI = [sys.executable, "-m", "tools.cli"]
# a real interpreter binary (not a pyenv shim, whose pid would be bash)
PY = os.path.realpath(sys.executable)


def start_target(name: str, seconds: float, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([PY, str(TARGETS / name), str(seconds), *extra])
    time.sleep(0.5)           # let the interpreter start before py-spy looks
    return proc


def run_cli(args: list[str], timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


def test_hot_function_is_top_frame_with_its_share(tmp_path):
    truth = tmp_path / "truth.txt"
    proc = start_target("hot_cold.py", 120, str(truth))    # killed after the run
    svg, js = tmp_path / "flame.svg", tmp_path / "cpu.json"
    try:
        res = run_cli(["cpuprof", "--pid", str(proc.pid), "--duration", "4", "--rate", "200",
                       "--svg", str(svg), "--json", str(js)])
    finally:
        stop(proc)
    assert res.returncode == 0, res.stderr
    hot_s, cold_s = map(float, truth.read_text().split())
    want = 100.0 * hot_s / (hot_s + cold_s)
    assert 70 < want < 90                       # the target did what it says
    data = json.loads(js.read_text())
    top = data["python"]["top"]
    assert top[0]["frame"].startswith("hot_loop ")
    cold = next(r for r in top if r["frame"].startswith("cold_loop "))
    # the target's truth covers only the two functions (not main's loop glue)
    hot_share = 100.0 * top[0]["self_samples"] / (top[0]["self_samples"] + cold["self_samples"])
    assert hot_share == pytest.approx(want, abs=5)
    assert top[0]["self_pct"] > 55
    main = next(r for r in top if r["frame"].startswith("main "))
    assert main["total_pct"] == pytest.approx(100.0, abs=0.5)
    samples = data["python"]["samples"]
    assert samples > 200                        # 4 s at 200 Hz on a shared machine
    assert data["partial"] is False
    # the folded file and the SVG describe the same samples
    folded = Path(data["folded"]).read_text().splitlines()
    assert sum(int(line.rpartition(" ")[2]) for line in folded) == samples, folded
    text = svg.read_text()
    assert text.startswith("<svg") and "hot_loop" in text and f"{samples} samples" in text


@requires_bcc
def test_native_kernel_share_tells_syscall_bound_from_cpu_bound(tmp_path):
    shares = {}
    for name in ("kernel_heavy.py", "hot_cold.py"):
        proc = start_target(name, 120)     # killed after; BPF compiles slowly under load
        js = tmp_path / f"{name}.json"
        try:
            res = run_cli(["cpuprof", "--pid", str(proc.pid), "--duration", "2", "--native", "--rate", "200",
                           "--svg", str(tmp_path / f"{name}.svg"), "--json", str(js)])
        finally:
            stop(proc)
        assert res.returncode == 0, res.stderr
        nat = json.loads(js.read_text())["native"]
        assert nat["samples"] > 40, nat["samples"]   # up to 400 if it had a whole core
        assert sum(int(ln.rpartition(" ")[2]) for ln in Path(nat["folded"]).read_text().splitlines()) \
            == nat["samples"]
        assert nat["lost"]["map_full"] == 0
        shares[name] = nat["kernel_pct"]
        if name == "hot_cold.py":
            top3 = [r["frame"] for r in nat["top"][:3]]
            assert any(f.startswith("_PyEval_EvalFrameDefault") for f in top3), top3
            # no frame pointers: the walk past the leaf is garbage and is cut off
            assert nat["truncated_samples"] > 0 and "frame pointers" in nat["note"]
            assert nat["user_stack_depth_max"] <= 3
    assert shares["kernel_heavy.py"] > 80, shares
    assert shares["hot_cold.py"] < 15, shares


def test_pid_that_does_not_exist_exits_4(tmp_path):
    res = run_cli(["cpuprof", "--pid", "999999", "--duration", "1", "--svg", str(tmp_path / "x.svg")])
    assert res.returncode == 4
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_pyspy_missing_exits_3_with_fix(tmp_path):
    env = dict(os.environ, HEIMDALL_PYSPY=str(tmp_path / "no-py-spy"))
    res = run_cli(["cpuprof", "--pid", str(os.getpid()), "--duration", "1",
                   "--svg", str(tmp_path / "x.svg")], env=env)
    assert res.returncode == 3
    assert "py-spy not found" in res.stderr and "pip install py-spy" in res.stderr
    assert "Traceback" not in res.stderr


def test_target_exits_mid_run_gives_partial_result(tmp_path):
    proc = start_target("hot_cold.py", 6)
    js = tmp_path / "cpu.json"
    started = time.monotonic()
    try:
        res = run_cli(["cpuprof", "--pid", str(proc.pid), "--duration", "40",
                       "--svg", str(tmp_path / "f.svg"), "--json", str(js)])
    finally:
        stop(proc)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert took < 30
    data = json.loads(js.read_text())
    assert data["partial"] is True and data["end_reason"] == "target-exited"
    assert data["python"]["samples"] > 0
    assert data["python"]["top"][0]["frame"].startswith("hot_loop ")
    assert (tmp_path / "f.svg").read_text().startswith("<svg")
