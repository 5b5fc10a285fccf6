"""`load --ramp` against a responder whose capacity is set by a fixed per-query cost (~1 ms of
work: about 1200-1700 q/s here), held to the closed-loop maximum dnsperf measures right before and
right after it (the higher of the two: a neighbour's burst only ever lowers a rate).

At ~1 ms per query the generator needs under a tenth of a core at the knee, so on this shared 2-core
machine it is never the limit; neither process is pinned, so a neighbour's burst on one core does not
hold the responder there.

An open-loop rate cannot quite reach the closed-loop maximum: with 20 queries always waiting, dnsperf
keeps the responder reading without ever sleeping, while paced queries wake it for each one, and a
wakeup costs CPU in this VM. Measured here (`load --ramp --pid` beside dnsperf, twice): 862 us of
responder CPU per query at 1,114 q/s open-loop against 722 us at the closed-loop maximum of 1,384 q/s,
so the knee sits at 0.77-0.88 of that maximum, and the bisection stops within 5 % below it. The ramp
must land between 0.70 and 1.15 of it: a ramp that stopped at half the capacity, or claimed more
than the server can answer, fails.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import requires_dnsperf
from probe_targets import CLI, REPO
from targets.busy_responder import Responder
from tools.loadgen import LoadConfig, run_load

COST_US = 1000.0


def closed_loop_max(server: str) -> float:
    r = run_load(LoadConfig(test_type="cache-hit", server=server, duration=3, warmup=0.5, clients=20,
                            engine="dnsperf"))
    return r["qps"]


def cli_ramp(server: str, pid: int, tmp_path, start: float) -> dict:
    out, png = tmp_path / "ramp.json", tmp_path / "ramp.png"
    proc = subprocess.run([*CLI, "load", "--ramp", "--server", server, "--pid", str(pid), "--ramp-start",
                           str(start), "--ramp-step", "2", "--json", str(out), "--chart", str(png)],
                          capture_output=True, text=True, timeout=150, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "capacity:" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(out.read_text())


@requires_dnsperf
def test_capacity_matches_the_closed_loop_maximum(tmp_path):
    with Responder(COST_US) as responder:
        for attempt in range(2):   # a neighbour's burst can spoil one pair; never both in a row
            before = closed_loop_max(responder.server)
            result = cli_ramp(responder.server, responder.pid, tmp_path, start=before / 2)
            truth = max(before, closed_loop_max(responder.server))
            ratio = (result["capacity_qps"] or 0) / truth
            print(f"attempt {attempt}: dnsperf {truth:.0f} q/s, ramp {result['capacity_qps']} q/s")
            if 0.70 < ratio < 1.15:
                break
    assert 0.70 < ratio < 1.15, (truth, result["steps"])
    assert result["schema"] == "heimdall.ramp/1"
    assert result["limit"] in ("p99", "loss", "loss+p99")
    steps = result["steps"]
    assert any(not s["held"] for s in steps) and any(s["held"] for s in steps)
    assert all(s["generator_limited"] is False for s in steps)
    # past the knee the responder's one thread is busy a whole core, the generator far from one
    knee = result["knee"]
    assert knee["offered_qps"] == result["first_failed_qps"] and not knee["held"]
    assert knee["server_cpu_cores"] > 0.7 and knee["generator_cpu_cores"] < 0.5, knee
    assert "server's CPU is the limit" in result["saturation"]
    assert result["elapsed_s"] < 120


@pytest.mark.parametrize("args, needle", [
    (["--max-loss", "150"], "--max-loss"),
    (["--max-loss", "-1"], "--max-loss"),
    (["--max-p99", "0"], "--max-p99"),
    (["--ramp-growth", "1"], "--ramp-growth"),
    (["--qps", "100"], "--qps"),
    (["--ramp-start", "1000", "--ramp-max", "10"], "--ramp-max"),
])
def test_bad_ramp_options_exit_3(args, needle):
    proc = subprocess.run([*CLI, "load", "--ramp", "--server", "127.0.0.1:9", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr


def test_chart_without_ramp_is_a_usage_error(tmp_path):
    proc = subprocess.run([*CLI, "load", "--server", "127.0.0.1:9", "--chart", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 3 and "--ramp" in proc.stderr, proc.stderr
