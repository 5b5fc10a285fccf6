"""What a probe's BPF programs cost: their run time as the kernel measures it.

The kernel counts each BPF program's runs and the nanoseconds spent in it
(`run_cnt`, `run_time_ns` in /proc/self/fdinfo/<prog fd>) while run-time
statistics are on. We turn them on with the BPF_ENABLE_STATS command, which
keeps them on only while we hold its file descriptor (no global sysctl left
behind), read the counters when the window opens and closes, and report the
difference. What this leaves out: the tracepoint's own dispatch before the
program runs (tens of ns per event) and the probe's user-space work, which
the probes report next to it. Programs on scheduler tracepoints run for every
context switch on the machine, so their cost falls on every process, not
only the target: the share reported is of the whole machine's CPU time.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass, field

BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}


@dataclass
class ProgCounters:
    """run_cnt and run_time_ns of one program at one moment."""

    runs: int = 0
    ns: int = 0


def enable_stats() -> int | None:
    """An fd that keeps BPF run-time statistics on while open; None when the kernel refuses."""
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(BPF_STATS_RUN_TIME, 0)
    fd = libc.syscall(nr, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd if fd >= 0 else None


def prog_counters(fd: int) -> ProgCounters:
    """The counters of the program behind fd (zeros when the kernel does not show them)."""
    out = ProgCounters()
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == "run_cnt":
                    out.runs = int(value)
                elif key == "run_time_ns":
                    out.ns = int(value)
    except (OSError, ValueError):
        pass
    return out


@dataclass
class BpfCost:
    """Run-time statistics of a loaded BCC program's functions across a window."""

    stats_fd: int | None = None
    start: dict[str, ProgCounters] = field(default_factory=dict)
    end: dict[str, ProgCounters] = field(default_factory=dict)

    @staticmethod
    def _progs(bpf) -> dict[str, int]:
        return {(name.decode() if isinstance(name, bytes) else str(name)): fn.fd
                for name, fn in bpf.funcs.items()}

    def begin(self, bpf) -> None:
        """Turn statistics on and read the counters (at window open)."""
        if self.stats_fd is None:
            self.stats_fd = enable_stats()
        self.start = {name: prog_counters(fd) for name, fd in self._progs(bpf).items()}

    def finish(self, bpf) -> None:
        """Read the counters again (at window close)."""
        self.end = {name: prog_counters(fd) for name, fd in self._progs(bpf).items()}

    def close(self) -> None:
        fd, self.stats_fd = self.stats_fd, None
        if fd is not None:
            os.close(fd)

    def report(self, seconds: float) -> dict:
        """Per program and in total: runs, ns, ns per run, share of the machine's CPU time."""
        if self.stats_fd is None and not self.end:
            return {"measured": False, "reason": "the kernel refused BPF_ENABLE_STATS"}
        progs = {}
        for name, end in self.end.items():
            begin = self.start.get(name, ProgCounters())
            runs, ns = end.runs - begin.runs, end.ns - begin.ns
            if runs:
                progs[name] = {"runs": runs, "ns": ns, "ns_per_run": round(ns / runs, 1)}
        total_ns = sum(p["ns"] for p in progs.values())
        cpus = os.cpu_count() or 1
        return {"measured": True,
                "method": ("kernel BPF run-time statistics (BPF_ENABLE_STATS; run_time_ns/run_cnt per program, "
                           "read at window open and close); excludes tracepoint dispatch"),
                "bpf_runs": sum(p["runs"] for p in progs.values()), "bpf_ns": total_ns,
                "bpf_cpu_share": round(total_ns / max(seconds, 1e-9) / 1e9 / cpus, 6),
                "cpus": cpus, "programs": progs}
