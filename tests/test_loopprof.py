"""loopprof against an event loop blocked on purpose: 50 ms sleeps every 500 ms (off the CPU) and
30 ms CPU spins every 700 ms (on it), under asyncio and uvloop (probes/targets/loop_stalls.py).

The target prints each stall it made with its start and its own measured length: the truth. The
probe's stalls are matched to it by time; counts come from the probe, never from the target."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import requires_bcc
from probe_targets import CLI, TARGETS, profile_target

pytestmark = requires_bcc

SECONDS = 6.0
SPIN_MS = 30.0   # the target's spin: 30 ms of its thread's CPU time
SLEEP_MS = 50.0  # the target's time.sleep


def truth_of(report: dict[str, list[str]]) -> dict[str, list[tuple[int, float]]]:
    """kind -> [(start ns, wall ms)] as the target measured them."""
    out: dict[str, list[tuple[int, float]]] = {"sleep": [], "busy": []}
    for kind in out:
        for line in report.get(kind, []):
            start, wall = line.split()
            out[kind].append((int(start), float(wall)))
    return out


def profile(*extra: str) -> tuple[dict, dict]:
    argv = [sys.executable, str(TARGETS / "loop_stalls.py"), str(SECONDS), *extra]
    return profile_target("probes.loopprof:LoopProf", argv, threshold_ms=10.0)


def matched(stalls: list[dict], truth: list[tuple[int, float]]) -> list[tuple[dict, float]]:
    """(probe stall, the target's wall ms) for each true stall inside one of the probe's stalls."""
    out = []
    for start, wall in truth:
        hits = [s for s in stalls if s["start_ns"] <= start <= s["start_ns"] + s["len_ns_"]]
        if len(hits) == 1:
            out.append((hits[0], wall))
    return out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stalls_match_what_the_loop_did(loop):
    """One retry with a new window: a neighbour hogging both cores can delay a py-spy dump past a spin's end."""
    try:
        check_stalls(loop)
    except AssertionError:
        check_stalls(loop)


def check_stalls(loop: str) -> None:
    report, result = profile(*(["uvloop"] if loop == "uvloop" else []))
    truth = truth_of(report)
    # the target did what it was designed to (its schedule, not the probe, sets these)
    assert abs(len(truth["sleep"]) - int(SECONDS / 0.5 - 1e-9)) <= 1, truth["sleep"]
    assert abs(len(truth["busy"]) - int((SECONDS - 0.25) / 0.7)) <= 1, truth["busy"]
    stalls = result["stalls"]["list"]
    for s in stalls:
        s["len_ns_"] = int(s["len_ms"] * 1e6)
    loop_tid = int(report["loop_tid"][0])
    assert {s["tid"] for s in stalls} == {loop_tid}, stalls
    sleeps, spins = matched(stalls, truth["sleep"]), matched(stalls, truth["busy"])
    n_sleep, n_busy = len(truth["sleep"]), len(truth["busy"])
    assert abs(len(sleeps) - n_sleep) <= 0.1 * n_sleep, (len(sleeps), n_sleep)
    assert abs(len(spins) - n_busy) <= 0.1 * n_busy, (len(spins), n_busy)
    # kinds: every sleep off the CPU, 50 ms of it asleep (on this shared machine the wake-up may then
    # wait for a CPU longer still: kind "preempted", off the CPU but runnable); no spin asleep. A spin
    # can wait for a CPU for most of its wall time too, but its time on the CPU is the target's 30 ms
    # of thread CPU time, and a spin the target saw take < 1.5 x that was mostly on the CPU.
    for s, _ in sleeps:
        assert s["kind"] in ("off-cpu", "preempted") and s["blocked_ms"] >= 0.9 * SLEEP_MS, s
    assert result["stalls"]["off-cpu"]["count"] <= n_sleep * 1.1
    assert all(s["kind"] in ("on-cpu", "preempted") and s["blocked_ms"] < 2.0 for s, _ in spins), spins
    # (the probe's time on the CPU also holds the loop's own work in that iteration and any time the
    # hypervisor took the vCPU away unseen: 34.2 ms for a 30 ms spin in one CI run, twice in a row)
    for s, wall in spins:
        assert abs(s["len_ms"] - s["off_cpu_ms"] - SPIN_MS) <= 0.15 * SPIN_MS + 1.0, s
        assert s["kind"] == "on-cpu" or wall > 1.5 * SPIN_MS, (s, wall)
    # lengths: the probe's stall holds the target's own measurement, and is at most 10 % longer, but
    # for the time the machine kept the thread from a CPU after the target's clock stopped (seen: 8 ms)
    for s, wall in sleeps + spins:
        assert wall * 0.98 <= s["len_ms"], (s, wall)
        assert s["len_ms"] - s["preempted_ms"] <= wall * 1.10 + 1.0, (s, wall)
    assert all(s["syscall"] == "clock_nanosleep" for s, _ in sleeps), sleeps
    # names: where py-spy caught a stall while it ran, it names the function that blocked
    named_sleeps = [s["function"] for s, _ in sleeps if s["function"]]
    named_spins = [s["function"] for s, _ in spins if s["function"]]
    assert len(named_sleeps) >= 0.5 * len(sleeps) and named_spins, result["stacks"]
    assert all(f.startswith("block_in_sleep ") for f in named_sleeps), named_sleeps
    assert all(f.startswith("spin_on_cpu ") for f in named_spins), named_spins
    # totals agree with the list and the histogram
    assert result["stalls"]["count"] == len(stalls) >= len(sleeps) + len(spins)
    assert sum(b["count"] for b in result["iteration_histogram_us"]) == result["iterations"] > len(stalls)
    assert result["overhead"]["measured"] and result["overhead"]["bpf_runs"] > result["iterations"]
    assert all(v == 0 for v in result["lost"].values()), result["lost"]
    json.dumps(result)


ASYNC_PROGRAM = """
import asyncio, time
async def main():
    for _ in range(20):
        await asyncio.sleep(0.1)
        time.sleep(0.02)
asyncio.run(main())
"""


def test_cli_announces_its_window_and_keeps_a_partial_result(tmp_path):
    out = tmp_path / "loop.json"
    proc = subprocess.run([*CLI, "loopprof", "--duration", "30", "--threshold-ms", "15", "--json", str(out),
                           "--", sys.executable, "-c", ASYNC_PROGRAM], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "loopprof: attached to pid" in proc.stderr and "window open for 30 s" in proc.stderr
    result = json.loads(out.read_text())
    assert result["partial"] is True and result["end_reason"] == "target-exited"
    assert result["attach_s"] < 10
    # 20 x 20 ms sleeps, some before the window opened: those in it are 15 ms+ stalls off the CPU
    st = result["stalls"]
    assert 5 <= st["off-cpu"]["count"] + st["preempted"]["count"] <= 20 and st["on-cpu"]["count"] <= 2, st
    assert "PARTIAL" in proc.stdout


def test_each_worker_loop_is_seen_through_the_supervisor(upstream):
    """Heimdall with 2 SO_REUSEPORT workers under load, loopprof given the supervisor's pid."""
    from closed_loop import ClosedLoop
    from heimdall_server import HeimdallProcess
    from probes.loopprof import LoopProf
    from procs import children

    def cached(client: int, seq: int) -> tuple[str, str]:
        return f"p{(client * 31 + seq) % 300}.bench.test", "cached"

    with HeimdallProcess([upstream.addr], args=["--worker-threads", "2"]) as h:
        kids = children(h.pid)
        with LoopProf(h.pid, threshold_ms=10.0, stacks=False) as probe:
            probe.open_window()
            with ClosedLoop(h.address, h.port, cached, clients=16, timeout=2.0, gap=0.0) as load:
                time.sleep(2.0)
            result = probe.collect()
    answered = sum(1 for r in load.records if not r.lost)
    per = {int(pid): row for pid, row in result["processes"].items()}
    assert kids <= set(result["pids"]), result["pids"]
    # every answer was read in some iteration of a worker's loop, and SO_REUSEPORT used both workers
    assert all(per[k]["iterations"] > 0.02 * answered for k in kids), (per, answered)
    assert sum(row["iterations"] for row in per.values()) == result["iterations"]
    assert sum(row["stalls"] for row in per.values()) == result["stalls"]["count"]
    assert result["lost"]["map_full"] == 0
