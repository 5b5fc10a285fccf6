"""lockprof against programs whose truth is known: a pthread mutex waited on
exactly K times, and two CPU-bound Python threads fighting for the GIL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import requires_bcc
from probe_targets import CLI, TARGETS, compile_target, profile_target

pytestmark = requires_bcc

K, T_MS = 20, 10


@pytest.fixture(scope="module")
def mutex_wait(tmp_path_factory):
    return compile_target("mutex_wait", tmp_path_factory.mktemp("lockprof"))


def profile(argv: list[str], **opts) -> tuple[dict, dict]:
    return profile_target("probes.lockprof:LockProf", argv, **opts)


def test_mutex_waits_match_what_the_program_measured(mutex_wait):
    report, result = profile([str(mutex_wait), str(K), str(T_MS)], top=20)
    tid = int(report["waiter_tid"][0])
    measured_us = float(report["wait_us_total"][0])
    futex = result["futex"]
    rows = [r for r in futex["top"] if r["tid"] == tid]
    assert len(rows) == 1, rows                      # one mutex, one call site
    row = rows[0]
    assert row["waits"] == K
    assert row["op"] == "WAIT"
    assert row["outcomes"]["woken"] + row["outcomes"]["eagain"] == K
    assert abs(row["wait_us_total"] - measured_us) <= 0.10 * measured_us, (row, measured_us)
    assert row["wait_us_max"] >= row["wait_us_mean"] >= 0.5 * T_MS * 1000
    # the holder thread woke the waiter every time
    assert sum(w["woken"] for w in row["wakers"] if w["tid"] != tid) == row["outcomes"]["woken"]
    # histogram and totals agree; every wait op the process made is counted
    assert sum(b["count"] for b in futex["histogram_us"]) == futex["waits"]
    assert futex["by_op"]["WAIT"]["calls"] >= K
    assert result["partial"] is False
    assert all(v == 0 for k, v in result["lost"].items() if k != "stack_other"), result["lost"]
    json.dumps(result)


def test_gil_waits_are_seen_as_wait_bitset(tmp_path):
    report, result = profile([sys.executable, str(TARGETS / "gil_spin.py"), "1.5"], top=50)
    spinners = {int(t) for t in report["tid"]}
    elapsed_us = float(report["elapsed"][0]) * 1e6
    futex = result["futex"]
    assert futex["by_op"]["WAIT_BITSET"]["calls"] > 20
    # The GIL is a condvar: glibc alternates its waiters between two futex words
    # (__g_signals[0/1]), so "one address" means one pthread_cond_t: every
    # WAIT_BITSET word the spinners wait on lies inside one small struct.
    gil = [u for u in futex["by_uaddr"] if "WAIT_BITSET" in u["ops"] and spinners & set(u["tids"])]
    addrs = [int(u["uaddr"], 16) for u in gil]
    assert gil and max(addrs) - min(addrs) < 128, futex["by_uaddr"]
    assert spinners <= {t for u in gil for t in u["tids"]}
    assert sum(u["waits"] for u in gil) > 40
    spin_wait = sum(t["wait_us_total"] for t in futex["by_thread"] if t["tid"] in spinners)
    # one GIL, two runnable threads: each waits for a good part of the run
    assert 0.25 * elapsed_us < spin_wait < 2.0 * elapsed_us, (spin_wait, elapsed_us)
    assert futex["by_outcome"]["timedout"]["calls"] > 0   # the 5 ms switch-interval timeouts
    assert futex["stack_note"]["limited"] is True


def test_target_exiting_mid_window_gives_partial_result(tmp_path):
    out = tmp_path / "lock.json"
    proc = subprocess.run([*CLI, "lockprof", "--duration", "30", "--json", str(out), "--",
                           sys.executable, "-c", "import time; time.sleep(4)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["partial"] is True and result["end_reason"] == "target-exited"
    assert result["duration_s"] < 10
    assert "PARTIAL" in proc.stdout


def test_ctrl_c_detaches_and_writes_partial_result(tmp_path):
    import signal
    import time

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    out = tmp_path / "lock.json"
    try:
        cli = subprocess.Popen([*CLI, "lockprof", "--pid", str(sleeper.pid), "--duration", "30",
                                "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        cli.send_signal(signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cli.returncode == 0, stderr
    result = json.loads(out.read_text())
    assert result["partial"] is True and result["end_reason"] == "interrupted"
    assert result["duration_s"] < 10
