"""The probes are safe on a production server: SIGKILL leaves nothing attached, the target never errs.

Method. A BPF program can run only while it is loaded, and the kernel unloads
it when the last reference goes: the loader's fd, a perf event (tracepoint or
uprobe attachment) or a link. So while the probe runs we read the program and
map IDs its process holds (/proc/PID/fdinfo of its `anon_inode:bpf-prog` and
`bpf-map` fds: `prog_id:`, `map_id:`); after SIGKILL every one of those IDs must
be gone from the kernel's ID space (`bpftool prog show` / `map show`, which walk
all IDs, not only those some process holds), and no program loaded while the
probe ran may be left without a live holder (other engineers' tools may load
their own meanwhile: those are held by their live processes). Probe
definitions made through tracefs (uprobe_events) and ftrace-enabled events
would outlive a process without any BPF reference, so those files must read
as before. All the while a closed-loop client queries the server: every query
of the whole run (before, during attach, under the probe, across the kill and
after) must be answered correctly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from closed_loop import ClosedLoop, summary
from conftest import requires_bcc
from heimdall_server import HeimdallProcess

pytestmark = requires_bcc

TRACING = Path("/sys/kernel/tracing")
CLI = [sys.executable, "-m", "tools.cli"]
NSD_IP = "192.0.2.1"


def held_ids(pid: int) -> tuple[set[int], set[int], int]:
    """(prog IDs, map IDs, perf event fds) held by pid's open fds."""
    progs, maps, perf = set(), set(), 0
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except FileNotFoundError:
        return progs, maps, 0
    for fd in fds:
        try:
            target = os.readlink(fd)
            if target == "anon_inode:[perf_event]":
                perf += 1
                continue
            if not target.startswith("anon_inode:bpf-"):
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except (FileNotFoundError, ProcessLookupError, OSError):
            continue
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                progs.add(int(value))
            elif key == "map_id":
                maps.add(int(value))
    return progs, maps, perf


def all_holders() -> set[int]:
    """Every prog ID some live process holds an fd on."""
    ids: set[int] = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            ids |= held_ids(int(p.name))[0]
    return ids


def loaded(kind: str) -> dict[int, dict]:
    """Kernel-wide: every loaded BPF program (kind='prog') or map ('map'), by ID."""
    out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return {item["id"]: item for item in json.loads(out.stdout or "[]")}


def tracefs_state() -> dict[str, str]:
    """Files whose content would show a probe left behind by something other than an fd."""
    state = {}
    for name in ("uprobe_events", "kprobe_events", "dynamic_events"):
        f = TRACING / name
        if f.exists():
            state[name] = f.read_text()
    for f in sorted(TRACING.glob("events/*/enable")):
        state[str(f.relative_to(TRACING))] = f.read_text()
    return state


def wait_attached(pid: int, proc: subprocess.Popen, timeout: float = 90.0) -> tuple[set[int], set[int], int]:
    """Wait until the probe holds BPF programs and perf events, and the set stops growing."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"probe exited with {proc.returncode} before attaching")
        now = held_ids(pid)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif now[0] and now[2] and time.monotonic() - stable_since >= 1.5:
            return now
        time.sleep(0.1)
    raise AssertionError(f"probe did not attach within {timeout:.0f}s (holds {last})")


@pytest.fixture(scope="module")
def bpftool_present():
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed (scripts/setup.sh installs it)")


def warm_pick(client: int, seq: int) -> tuple[str, str]:
    return f"p{(client * 31 + seq) % 300}.bench.test", "cached"


def wait_attaching(pid: int, proc: subprocess.Popen, timeout: float = 90.0) -> tuple[set[int], set[int], int]:
    """Wait for the first attachment (a perf event fd): the probe is half attached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"probe exited with {proc.returncode} before attaching")
        now = held_ids(pid)
        if now[2]:
            return now
        time.sleep(0.002)
    raise AssertionError(f"probe did not start attaching within {timeout:.0f}s")


@pytest.mark.parametrize("probe,extra,when", [("lockprof", [], "attached"), ("memprof", ["--no-overhead"], "attached"),
                                              ("netprof", [], "attached"), ("netprof", [], "attaching")])
def test_sigkilled_probe_leaves_nothing_attached_and_the_server_never_errs(upstream, bpftool_present, tmp_path,
                                                                           probe, extra, when):
    with HeimdallProcess([upstream.addr]) as h:
        before_tracefs = tracefs_state()
        before_progs = set(loaded("prog"))
        out = open(tmp_path / "probe.log", "wb")
        with ClosedLoop(h.address, h.port, warm_pick, clients=6, timeout=2.0, gap=0.002) as load:
            time.sleep(0.5)
            p = subprocess.Popen(CLI + [probe, "--pid", str(h.pid), "--duration", "120", *extra],
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                if when == "attaching":  # kill it half attached: only the orphan check sees the rest
                    progs, maps, perf = wait_attaching(p.pid, p)
                else:
                    progs, maps, perf = wait_attached(p.pid, p)
                    during = loaded("prog")
                    assert progs <= set(during)  # the positive control: the kernel lists what the probe holds
                served_before_kill = len(load.records)
                if when == "attached":
                    time.sleep(1.0)  # probed under load
                t_kill = time.monotonic()
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            # The kernel frees programs and maps asynchronously (RCU): give it a moment.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                left_progs = progs & set(loaded("prog"))
                left_maps = maps & set(loaded("map"))
                if not left_progs and not left_maps:
                    break
                time.sleep(0.2)
            gone_after = time.monotonic() - t_kill
            time.sleep(1.0)  # and the server keeps serving after the detach
        recs = load.records
        print(f"\n[probe-safety] {probe} killed {when}: held {len(progs)} progs, {len(maps)} maps, {perf} perf events; "
              f"all gone {gone_after:.1f}s after SIGKILL; load {summary(recs)}")
        assert not left_progs, f"programs still loaded after SIGKILL: {sorted(left_progs)}"
        assert not left_maps, f"maps still loaded after SIGKILL: {sorted(left_maps)}"
        # Nothing loaded meanwhile (by anyone) is left without a live holder. Another tool that
        # just exited may leave a program for a moment (freed after an RCU grace period): only
        # an orphan that stays counts.
        deadline = time.monotonic() + 5
        while True:
            holders = all_holders()
            orphans = {i: v["name"] for i, v in loaded("prog").items()
                       if i not in before_progs and i not in holders and v.get("type") in
                       ("tracepoint", "kprobe", "perf_event", "raw_tracepoint", "tracing")}
            if not orphans or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not orphans, f"programs loaded during the run and held by no process: {orphans}"
        after = tracefs_state()
        changed = {k for k in set(before_tracefs) | set(after) if before_tracefs.get(k) != after.get(k)}
        assert not changed, {k: after.get(k) for k in changed}
        assert len(recs) > 500 and len(recs) > served_before_kill
        assert [r for r in recs if r.lost] == [], summary(recs)
        assert all(r.rcode == 0 and r.address == NSD_IP for r in recs), summary(recs)
        assert h.proc.poll() is None and "Traceback" not in h.log


def test_probe_that_finishes_detaches_cleanly_under_load(upstream, bpftool_present, tmp_path):
    """The normal path: memprof (uprobes patch the target's libc text) attaches, runs 2 s, detaches."""
    with HeimdallProcess([upstream.addr]) as h:
        with ClosedLoop(h.address, h.port, warm_pick, clients=6, timeout=2.0, gap=0.002) as load:
            time.sleep(0.5)
            r = subprocess.run(CLI + ["memprof", "--pid", str(h.pid), "--duration", "2", "--no-overhead",
                                      "--json", str(tmp_path / "m.json")], capture_output=True, text=True,
                               timeout=180)
            time.sleep(1.0)
        recs = load.records
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads((tmp_path / "m.json").read_text())
        assert result.get("partial") is False
        print(f"\n[probe-safety] memprof 2 s window completed; load {summary(recs)}")
        assert [x for x in recs if x.lost] == [], summary(recs)
        assert all(x.rcode == 0 and x.address == NSD_IP for x in recs), summary(recs)
        assert h.proc.poll() is None
