"""offcpu against a process whose off-CPU time is known: one thread sleeps N x T ms in
clock_nanosleep, another waits in epoll_wait the whole time, which must not count
(probes/targets/offcpu_sleeps.py measures both itself)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import requires_bcc
from probe_targets import CLI, TARGETS, Target

pytestmark = requires_bcc

N, T_MS = 40, 25


def run_cli(tmp_path) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """The offcpu command on a started target: the target's work begins once the window is open."""
    out, folded, svg = tmp_path / "off.json", tmp_path / "off.folded", tmp_path / "off.svg"
    target = Target([sys.executable, str(TARGETS / "offcpu_sleeps.py"), str(N), str(T_MS)])
    try:
        cli = subprocess.Popen([*CLI, "offcpu", "--pid", str(target.pid), "--duration", "4", "--json", str(out),
                                "--folded", str(folded), "--svg", str(svg)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert cli.stderr is not None
        first = cli.stderr.readline()
        assert "window open" in first, first + cli.stderr.read()
        report = target.go()
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        target.finish()
    done = subprocess.CompletedProcess(cli.args, cli.returncode, stdout, first + stderr)
    return report, json.loads(out.read_text()), done


def test_sleep_is_counted_and_idle_epoll_is_not(tmp_path):
    report, result, proc = run_cli(tmp_path)
    assert proc.returncode == 0, proc.stderr
    sleeper, idler = int(report["sleeper_tid"][0]), int(report["idler_tid"][0])
    slept_ms, idle_ms = float(report["slept_ms"][0]), float(report["idle_ms"][0])
    assert abs(slept_ms - N * T_MS) <= 0.25 * N * T_MS  # the target did what it was designed to (sleeps overshoot under load)
    threads = {t["tid"]: t for t in result["threads"]}
    # the sleeper: its off-CPU time is its time in time.sleep, within 10 %, all of it in clock_nanosleep
    assert abs(threads[sleeper]["offcpu_ms"] - slept_ms) <= 0.1 * slept_ms, (threads[sleeper], slept_ms)
    naps = [r for r in result["top"] if r["tid"] == sleeper and r["syscall"] == "clock_nanosleep"]
    assert naps and naps[0]["state"] == "sleeping" and naps[0]["count"] >= N * 0.9, result["top"]
    assert abs(sum(r["total_ms"] for r in naps) - slept_ms) <= 0.1 * slept_ms
    # the idler: its epoll waits are idle time, reported apart and not in its off-CPU total
    assert threads[idler]["idle_epoll_ms"] >= 0.8 * idle_ms, (threads[idler], idle_ms)
    assert threads[idler]["offcpu_ms"] <= 0.05 * idle_ms, threads[idler]
    assert not [r for r in result["top"] if r["syscall"] and "epoll" in r["syscall"]], result["top"]
    # stretches begun before the window or still running at its close are clipped to it
    window_ms = result["duration_s"] * 1000
    assert all(t["offcpu_ms"] + t["idle_epoll_ms"] <= window_ms + 5 for t in threads.values()), threads
    assert threads[result["pid"]]["offcpu_ms"] >= 0.5 * window_ms   # the main thread waits on stdin and join
    # the folded stacks carry the same microseconds, and the flame graph is drawn from them
    from probes.flamegraph import parse_folded

    stacks = parse_folded((tmp_path / "off.folded").read_text())
    mine = sum(v for k, v in stacks.items()
               if k[0].endswith(f"-{sleeper}") and any(f.endswith("_sys_clock_nanosleep") for f in k))
    assert abs(mine / 1000 - slept_ms) <= 0.1 * slept_ms, mine
    assert (tmp_path / "off.svg").read_text().startswith("<svg")
    assert result["overhead"]["measured"] and result["overhead"]["bpf_runs"] > 0
    assert all(v == 0 for k, v in result["lost"].items() if k != "stack_other"), result["lost"]


def test_target_exiting_mid_window_gives_partial_result(tmp_path):
    out = tmp_path / "off.json"
    proc = subprocess.run([*CLI, "offcpu", "--duration", "30", "--json", str(out), "--",
                           sys.executable, "-c", "import time\nfor _ in range(30): time.sleep(0.1)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["partial"] is True and result["end_reason"] == "target-exited"
    assert result["attach_s"] < 10 and result["duration_s"] < 10


def test_each_worker_is_seen_through_the_supervisor(upstream):
    """Heimdall with 2 workers, idle, then under load: every worker's loop thread shows idle epoll time."""
    import time

    from closed_loop import ClosedLoop
    from heimdall_server import HeimdallProcess
    from probes.offcpu import OffCpu
    from procs import children

    def cached(client: int, seq: int) -> tuple[str, str]:
        return f"p{(client * 31 + seq) % 300}.bench.test", "cached"

    with HeimdallProcess([upstream.addr], args=["--worker-threads", "2"]) as h:
        kids = children(h.pid)
        with OffCpu(h.pid) as probe:
            probe.open_window()
            time.sleep(1.0)
            with ClosedLoop(h.address, h.port, cached, clients=8, timeout=2.0, gap=0.01):
                time.sleep(1.0)
            result = probe.collect()
    per = {int(pid): row for pid, row in result["processes"].items()}
    window_ms = result["duration_s"] * 1000
    assert kids <= set(per), per
    # each worker's loop waited in epoll for most of the idle second at least
    assert all(per[k]["idle_epoll_ms"] >= 0.4 * window_ms for k in kids), per
    assert abs(sum(row["offcpu_ms"] for row in per.values()) - result["offcpu_ms"]) <= 1.0
    assert abs(sum(row["idle_epoll_ms"] for row in per.values()) - result["idle_epoll_ms"]) <= 1.0
