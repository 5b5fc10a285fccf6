"""memprof --outstanding against a program whose leak is known: exactly N blocks of S bytes left
allocated (through malloc+realloc and posix_memalign) while it allocates and frees everything else,
and frees blocks it allocated before the window opened."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import requires_bcc
from probe_targets import CLI, compile_target, profile_target

pytestmark = requires_bcc

N, S, SAMPLE = 2000, 1000, 10


@pytest.fixture(scope="module")
def leak_n(tmp_path_factory):
    return compile_target("leak_n", tmp_path_factory.mktemp("outstanding"))


def profile(argv: list[str], **opts) -> tuple[dict, dict]:
    return profile_target("probes.memprof:MemProf", argv, overhead=False, outstanding=True, **opts)


def test_reports_exactly_the_leaked_blocks(leak_n):
    report, result = profile([str(leak_n), str(N), str(S)], sample=SAMPLE)
    o = result["outstanding"]
    assert int(report["bytes"][0]) == N * S
    assert abs(o["bytes"] - N * S) <= 0.05 * N * S, o
    assert o["blocks"] == N
    assert o["counter_bytes"] == o["bytes"] and o["counter_blocks"] == o["blocks"]
    # the blocks from before the window were freed in it: neither a negative size nor a leak
    assert o["frees_of_older_blocks"] >= N
    assert o["size_percentiles"]["max"] <= S + S / 16 and o["size_percentiles"]["p50"] >= S - S / 16
    # every round's calloc+realloc, posix_memalign and aligned_alloc block came and went
    assert o["frees_of_window_blocks"] == 3 * N
    assert o["untracked"]["allocations"] == 0 and result["lost"]["map_full"] == 0
    # the sampled stacks, scaled, account for the leak, and name the leaking function
    est = sum(r["est_bytes"] for r in o["top_stacks"])
    assert 0.7 * N * S < est < 1.3 * N * S, o["top_stacks"]
    assert all(any("main" in f for f in r["stack"]) for r in o["top_stacks"]), o["top_stacks"]
    assert o["by_pid"] == {str(result["pid"]): {"bytes": o["bytes"], "blocks": o["blocks"]}}
    json.dumps(result)


def test_growth_rate_follows_a_steady_leak(leak_n):
    report, result = profile([str(leak_n), "600", str(S), "3"], sample=50)
    g = result["outstanding"]["growth"]
    truth = 600 * S / float(report["seconds"][0])
    assert len(g["samples"]) >= 3, g
    assert all(b["bytes"] <= a["bytes"] for b, a in zip(g["samples"], g["samples"][1:])), g
    assert 0.7 * truth < g["bytes_per_s"] < 1.3 * truth, (g, truth)


def test_a_full_map_counts_what_did_not_fit(leak_n):
    _report, result = profile([str(leak_n), str(N), str(S)], sample=SAMPLE, live_max=N // 2)
    o = result["outstanding"]
    assert o["blocks"] <= N // 2
    assert o["untracked"]["allocations"] > 0 and result["lost"]["map_full"] > 0
    assert o["blocks"] + o["untracked"]["allocations"] >= N


def test_cli_outstanding_json(leak_n, tmp_path):
    """The launched target reads its go line at once and exits when its leak is over: spread over 6 s,
    the leak outlasts memprof's attach (BPF compile included) even on a busy machine."""
    out = tmp_path / "mem.json"
    proc = subprocess.run([*CLI, "memprof", "--no-overhead", "--outstanding", "--duration", "30", "--json",
                           str(out), "--", str(leak_n), "300", str(S), "6"],
                          input="go\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["partial"] is True and result["end_reason"] == "target-exited"
    assert "outstanding at window end" in proc.stdout
    assert 0 < result["outstanding"]["blocks"] <= 300
