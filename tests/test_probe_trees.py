"""Probes watch a whole process tree: a supervisor's workers, and children started after attach.

* Heimdall with 2 SO_REUSEPORT workers under load from 16 source ports, every
  probe attached through the supervisor's pid: each lists both workers in
  `pids`, netprof's datagrams match the queries both workers answered, and
  the per-process figures add up to the totals.
* A worker killed in the window is replaced; the new one is watched from its
  fork (netprof) and memprof's uprobes follow it.
* A parent that starts its child only after the probe attached: the child's
  known work (K mutex waits, N mallocs, CPU time) shows under the child's pid.
* `-- COMMAND` covers the command's descendants too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from closed_loop import ClosedLoop, summary
from conftest import requires_bcc
from heimdall_server import HeimdallProcess
from probe_targets import CLI, REPO, TARGETS, Target, compile_target
from procs import children, wait_for

pytestmark = requires_bcc

FORK = [sys.executable, str(TARGETS / "fork_exec.py")]
NSD_IP = "192.0.2.1"


def cached(client: int, seq: int) -> tuple[str, str]:
    return f"p{(client * 31 + seq) % 300}.bench.test", "cached"


def some_new(client: int, seq: int) -> tuple[str, str]:
    """Mostly cached names; one in 20 new (a miss allocates, a warm hit does not)."""
    if seq % 20 == 0:
        return f"n{client}-{seq}-{time.monotonic_ns()}.bench.test", "new"
    return cached(client, seq)


def answered(recs) -> int:
    return sum(1 for r in recs if not r.lost)


def totals(result: dict, key: str) -> int:
    return sum(row[key] for row in result["processes"].values())


def test_both_workers_are_seen_through_the_supervisor(upstream):
    from probes.lockprof import LockProf
    from probes.memprof import MemProf
    from probes.netprof import NetProf

    with HeimdallProcess([upstream.addr], args=["--worker-threads", "2"]) as h:
        kids = children(h.pid)
        assert len(kids) == 2
        with ClosedLoop(h.address, h.port, cached, clients=16, timeout=2.0, gap=0.0):
            time.sleep(1.0)                       # warm both workers' caches
        probes = [NetProf(h.pid), LockProf(h.pid), MemProf(h.pid, overhead=False)]
        try:
            for probe in probes:
                probe.attach()
            for probe in probes:
                probe.open_window()
            with ClosedLoop(h.address, h.port, some_new, clients=16, timeout=2.0, gap=0.0) as load:
                time.sleep(3.0)
            net, lock, mem = (probe.collect(queries=answered(load.records)) for probe in probes)
        finally:
            for probe in probes:
                probe.close()
        recs = load.records
        print(f"\n[trees] load {summary(recs)}; netprof datagrams {net['udp']['datagrams']}; "
              f"per process {json.dumps(net['processes'])}")
        assert children(h.pid) == kids            # no restart in the window
    for result in (net, lock, mem):
        assert set(result["pids"]) == kids | {h.pid}, result["pids"]
        assert sorted(result["processes"], key=int) == [str(p) for p in result["pids"]]
        assert result["lost"]["map_full"] == 0
    ok = answered(recs)
    assert ok > 1000 and all(r.address == NSD_IP for r in recs if r.kind == "cached" and not r.lost)
    udp = net["udp"]
    # every query both workers answered was one datagram read on the watched port
    assert abs(udp["datagrams"] - ok) <= 0.01 * ok, (udp["datagrams"], ok)
    per = {int(pid): row for pid, row in net["processes"].items()}
    assert all(per[k]["datagrams"] > 0.05 * ok for k in kids), per      # SO_REUSEPORT used both
    assert per[h.pid]["datagrams"] == 0 and per[h.pid]["recv_syscalls"] == 0
    assert totals(net, "datagrams") == udp["datagrams"]
    assert totals(net, "recv_syscalls") == udp["recv_syscalls"]
    assert totals(net, "send_syscalls") == udp["send_syscalls"]
    assert totals(net, "drops") == udp["drops"] == 0
    # the other probes: per-process figures add up to their totals
    assert totals(lock, "futex_waits") == lock["futex"]["waits"]
    assert totals(mem, "alloc_calls") == mem["malloc"]["calls"]
    assert totals(mem, "alloc_bytes") == mem["malloc"]["bytes"]
    mper = {int(pid): row for pid, row in mem["processes"].items()}
    assert all(mper[k]["alloc_calls"] > 0 for k in kids), mper


def test_a_worker_restarted_in_the_window_is_watched_from_its_fork(upstream):
    from probes.memprof import MemProf
    from probes.netprof import NetProf

    with HeimdallProcess([upstream.addr], args=["--worker-threads", "2"]) as h:
        kids = children(h.pid)
        probes = [NetProf(h.pid), MemProf(h.pid, overhead=False)]
        try:
            for probe in probes:
                probe.attach()
            for probe in probes:
                probe.open_window()
            with ClosedLoop(h.address, h.port, some_new, clients=16, timeout=2.0, gap=0.001) as load:
                time.sleep(0.5)
                victim = min(kids)
                os.kill(victim, signal.SIGKILL)
                assert wait_for(lambda: len(children(h.pid)) == 2 and victim not in children(h.pid))
                time.sleep(2.0)
            net, mem = (probe.collect() for probe in probes)
        finally:
            for probe in probes:
                probe.close()
        (new,) = children(h.pid) - kids
    print(f"\n[trees] restart: {victim} -> {new}; load {summary(load.records)}; memprof followed {mem['followed']}")
    for result in (net, mem):
        assert {h.pid, victim, new} <= set(result["pids"]), result["pids"]
    assert net["processes"][str(new)]["datagrams"] > 0
    assert net["processes"][str(victim)]["datagrams"] > 0
    assert mem["followed"]["processes"] >= 1 and mem["followed"]["lag_ms_max"] is not None
    assert mem["processes"][str(new)]["alloc_calls"] > 0


def start_child(target: Target) -> int:
    """Let the parent start its child; returns the child's pid (from its own "ready" line)."""
    target.proc.stdin.write("go\n")
    target.proc.stdin.flush()
    first = target.proc.stdout.readline().split()
    assert first and first[0] == "ready", first
    return int(first[1])


def child_work(target: Target) -> dict[str, list[str]]:
    """Tell the child to work; its report up to "done"."""
    report: dict[str, list[str]] = {}
    target.proc.stdin.write("go\n")
    target.proc.stdin.flush()
    for line in target.proc.stdout:
        if line.strip() == "done":
            return report
        key, _, value = line.strip().partition(" ")
        report.setdefault(key, []).append(value)
    raise AssertionError("the child exited early")


def test_child_started_after_attach_has_its_mutex_waits(tmp_path):
    from probes.lockprof import LockProf

    k = 20
    exe = compile_target("mutex_wait", tmp_path)
    target = Target(FORK + [str(exe), str(k), "10"])
    try:
        with LockProf(target.pid, top=20) as probe:
            probe.open_window()
            child = start_child(target)     # forked after attach: the kernel adds it at fork
            report = child_work(target)
            result = probe.collect()
    finally:
        target.finish()
    assert result["pids"] == [target.pid, child]
    assert result["processes"][str(child)]["comm"] == "mutex_wait"
    waiter = int(report["waiter_tid"][0])
    rows = [r for r in result["futex"]["top"] if r["tid"] == waiter]
    assert len(rows) == 1 and rows[0]["pid"] == child and rows[0]["waits"] == k, rows
    assert result["processes"][str(child)]["futex_waits"] >= k
    assert totals(result, "futex_waits") == result["futex"]["waits"]


def test_child_started_after_attach_has_its_mallocs(tmp_path):
    from probes.memprof import MemProf

    n = 5000
    exe = compile_target("malloc_n", tmp_path)
    target = Target(FORK + [str(exe), str(n), "100"])
    try:
        with MemProf(target.pid, sample=10, overhead=False) as probe:
            probe.open_window()
            child = start_child(target)
            # memprof's uprobes are per process: the follower attaches them in the new child
            assert wait_for(lambda: child in probe.uprobes.events, 10), probe.uprobes.summary()
            report = child_work(target)
            result = probe.collect()
    finally:
        target.finish()
    assert child in result["pids"] and target.pid in result["pids"]
    row = result["processes"][str(child)]
    assert row["comm"] == "malloc_n"
    # its N mallocs and N frees, plus at most a little start-up of the program itself
    assert n <= row["alloc_calls"] <= n + 50, row
    assert int(report["bytes"][0]) <= row["alloc_bytes"] <= int(report["bytes"][0]) + 100_000
    assert n <= row["frees"] <= n + 50
    assert result["followed"]["processes"] >= 1
    assert totals(result, "alloc_calls") == result["malloc"]["calls"]


def test_cpuprof_samples_a_child_started_after_the_parent(tmp_path):
    parent = Target(FORK + [os.path.realpath(sys.executable), str(TARGETS / "hot_cold.py"), "60"])
    js = tmp_path / "cpu.json"
    try:
        parent.proc.stdin.write("go\n")
        parent.proc.stdin.flush()
        assert wait_for(lambda: children(parent.pid), 5)
        time.sleep(0.5)                          # let the child's interpreter start
        (child,) = children(parent.pid)
        res = subprocess.run(CLI + ["cpuprof", "--pid", str(parent.pid), "--duration", "2", "--native",
                                    "--rate", "100", "--svg", str(tmp_path / "f.svg"), "--json", str(js)],
                             capture_output=True, text=True, timeout=180, cwd=REPO)
    finally:
        parent.proc.terminate()                  # stops the child too
        parent.proc.wait(timeout=10)
    assert res.returncode == 0, res.stderr
    data = json.loads(js.read_text())
    assert child in data["pids"] and parent.pid in data["pids"]
    row = data["processes"][str(child)]
    assert row["samples"] > 50 and row["native_samples"] > 20, data["processes"]
    assert row["samples"] > 5 * data["processes"][str(parent.pid)]["samples"]   # the parent only waits
    assert sum(r["samples"] for r in data["processes"].values()) == data["python"]["samples"]
    assert data["python"]["top"][0]["frame"].startswith("hot_loop ")
    assert "per process" in res.stdout


def test_launched_command_covers_its_descendants(tmp_path):
    out = tmp_path / "lock.json"
    cmd = CLI + ["lockprof", "--duration", "3", "--json", str(out), "--",
                 *FORK, sys.executable, str(TARGETS / "gil_spin.py"), "15"]
    # "go" for the parent; the child's own read then sees end of input and it spins at once
    res = subprocess.run(cmd, input="go\n", capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    root = data["pid"]
    kids = [p for p in data["pids"] if p != root]
    assert len(kids) == 1, data["pids"]
    spinner = data["processes"][str(kids[0])]
    assert spinner["futex_waits"] > 20 and spinner["wait_us_total"] > 0.25 * 3e6, data["processes"]
    assert data["processes"][str(root)]["futex_waits"] < spinner["futex_waits"] / 10
    assert "per process" in res.stdout
    assert wait_for(lambda: not psutil.pid_exists(kids[0]), 10)   # the parent stopped it on SIGTERM
