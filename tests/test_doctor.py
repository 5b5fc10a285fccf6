"""doctor: every probe can attach on this machine, and a missing piece is named with its fix."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import requires_bcc
from probe_targets import CLI


@requires_bcc
def test_doctor_exits_0_here_with_every_check_ok(tmp_path):
    out = tmp_path / "doctor.json"
    proc = subprocess.run([*CLI, "doctor", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["ok"] is True
    names = [c["name"] for c in data["checks"]]
    for needed in ("privileges", "bcc", "kernel headers", "tracefs",
                   "lockprof: tracepoint syscalls:sys_enter_futex", "memprof: uprobe c:malloc"):
        assert needed in names
    assert all(c["ok"] for c in data["checks"])
    assert proc.stdout.count("OK") == len(data["checks"])


@requires_bcc
def test_missing_tracepoint_fails_with_exit_3_and_the_fix():
    from probes import doctor
    from tools.errors import ToolError

    doctor.PROBE_TRACEPOINTS["nosuchprobe"] = ["nosuchcat:nosuchevent", "syscalls:sys_enter_futex"]
    try:
        with pytest.raises(ToolError) as err:
            doctor.ensure_ready("nosuchprobe")
        checks = {c.name: c for c in doctor.run_checks(["nosuchprobe"])}
    finally:
        del doctor.PROBE_TRACEPOINTS["nosuchprobe"]
    assert err.value.exit_code == 3
    assert "nosuchcat:nosuchevent" in str(err.value) and "fix:" in str(err.value)
    assert checks["nosuchprobe: tracepoint nosuchcat:nosuchevent"].ok is False
    assert checks["nosuchprobe: tracepoint syscalls:sys_enter_futex"].ok is True


@requires_bcc
def test_uprobe_symbol_that_does_not_resolve_is_reported():
    from probes import doctor

    doctor.PROBE_UPROBES["nosuchprobe"] = [("c", "no_such_function_xyz", True), ("c", "malloc", True)]
    try:
        checks = {c.name: c for c in doctor.check_uprobes("nosuchprobe", None)}
    finally:
        del doctor.PROBE_UPROBES["nosuchprobe"]
    assert checks["nosuchprobe: uprobe c:no_such_function_xyz"].ok is False
    assert checks["nosuchprobe: uprobe c:malloc"].ok is True


def test_histogram_buckets_are_contiguous_and_fine_enough_for_p99():
    """Pure Python: bounds tile the u64 range, each value lands in its bucket, a 10 % p99 move shows."""
    import random

    from probes.histogram import HIST_BUCKETS, Histogram, bucket_bounds, hist_index

    prev = 0
    for i in range(HIST_BUCKETS):
        low, high = bucket_bounds(i)
        assert low == prev and high > low
        assert (high - low) <= max(1, low / 16)
        prev = high
    for v in list(range(300)) + [2 ** k + d for k in range(5, 63) for d in (-1, 0, 1)]:
        low, high = bucket_bounds(hist_index(v))
        assert low <= v < high
    rng = random.Random(7)
    values = [rng.lognormvariate(8, 1) for _ in range(50000)]
    base = Histogram.from_values(values)
    moved = Histogram.from_values([v * 1.10 for v in values])
    true_p99 = sorted(values)[int(0.99 * len(values))]
    assert abs(base.percentile(0.99) - true_p99) / true_p99 < 0.04
    shift = moved.percentile(0.99) / base.percentile(0.99)
    assert 1.05 < shift < 1.15
    assert Histogram.from_values([1, 2, 3]).to_json(scale=1.0, key="le") == [
        {"le": 2.0, "count": 1}, {"le": 3.0, "count": 1}, {"le": 4.0, "count": 1}]
