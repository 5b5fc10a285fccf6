"""Python stacks of event-loop stalls, caught while they still run.

BPF cannot walk this CPython's Python frames (probes/stacks.py), so for
each loop thread whose iteration passes the stall threshold while it is
still running, a watcher thread runs `py-spy dump --nonblocking` on the
process (about 10 ms here; --nonblocking so the dump does not stop the
target and lengthen the stall it looks at). A dump counts only if the
thread is still in the same iteration when py-spy returns, so the stack
is one that ran inside the stall; otherwise the stall is `missed` (it
ended first). The same thread drains the stall events BPF sends, so
nothing else touches the BPF object during the window.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

THREAD_LINE = re.compile(r'^Thread (0x[0-9A-Fa-f]+|\d+)(?: \(([^)]*)\))?: "(.*)"\s*$')
FRAME_LINE = re.compile(r"^\s+(\S.*?) \((.*)\)\s*$")


@dataclass
class PyThreadStack:
    """One thread of a py-spy dump: its id, state (idle/active), name and frames (innermost first)."""

    tid: int
    state: str
    name: str
    frames: list[str] = field(default_factory=list)


def parse_dump(text: str) -> list[PyThreadStack]:
    """`py-spy dump` output -> its threads."""
    threads: list[PyThreadStack] = []
    for line in text.splitlines():
        m = THREAD_LINE.match(line)
        if m:
            ident = m.group(1)
            tid = int(ident, 16) if ident.startswith("0x") else int(ident)
            threads.append(PyThreadStack(tid, m.group(2) or "", m.group(3)))
            continue
        f = FRAME_LINE.match(line)
        if f and threads:
            threads[-1].frames.append(f"{f.group(1)} ({os.path.basename(f.group(2))})")
    return threads


def thread_stack(text: str, tid: int) -> PyThreadStack | None:
    """The dumped stack of thread tid (the only thread when py-spy shows another kind of id)."""
    threads = parse_dump(text)
    for t in threads:
        if t.tid == tid:
            return t
    return threads[0] if len(threads) == 1 else None


@dataclass
class CaughtStack:
    """A Python stack dumped inside a stall: when (ms into the stall) and what ran."""

    stack: list[str]
    state: str
    at_ms: float


@dataclass
class WatcherStats:
    dumps: int = 0
    caught: int = 0
    missed: int = 0
    failed: int = 0
    skipped: int = 0          # stalls past the dump budget
    dump_cpu_s: float = 0.0   # CPU time of the py-spy processes
    watcher_cpu_s: float = 0.0


class StallWatcher:
    """Polls the loop threads' iterations in progress; dumps the Python stack of one past the threshold."""

    def __init__(self, bpf, pyspy: str | None, threshold_ns: int, poll_s: float, max_dumps: int,
                 on_event) -> None:
        self.bpf = bpf
        self.pyspy = pyspy
        self.threshold_ns = threshold_ns
        self.poll_ms = max(1, int(poll_s * 1000))
        self.max_dumps = max_dumps
        self.caught: dict[tuple[int, int], CaughtStack] = {}
        self.tried: set[tuple[int, int]] = set()
        self.stats = WatcherStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        bpf[b"stall_events"].open_perf_buffer(on_event, page_cnt=64)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loopprof-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, then drain the events sent before the window closed."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self._thread = None
        self.bpf.perf_buffer_poll(timeout=0)

    def _run(self) -> None:
        cpu0 = time.thread_time()
        while not self._stop.is_set():
            self.bpf.perf_buffer_poll(timeout=self.poll_ms)
            if self.pyspy is not None:
                self._check()
        self.stats.watcher_cpu_s += time.thread_time() - cpu0

    def _inflight(self) -> dict[int, tuple[int, int, int]]:
        """tid -> (tgid, seq, iteration start ns) of every loop thread now inside an iteration."""
        out = {}
        for k, v in self.bpf[b"loop_threads"].items():
            if v.iter_start:
                out[k.value] = (int(v.tgid), int(v.seq), int(v.iter_start))
        return out

    def _check(self) -> None:
        now = time.monotonic_ns()     # CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns
        for tid, (tgid, seq, start) in self._inflight().items():
            if now - start < self.threshold_ns or (tid, seq) in self.tried:
                continue
            if self.bpf[b"heimdall_targets"].get(ctypes.c_uint32(tgid)) is None:
                continue    # a thread of a process that has left the tree
            self.tried.add((tid, seq))
            if self.stats.dumps >= self.max_dumps:
                self.stats.skipped += 1
                continue
            self._dump(tgid, tid, seq, start)

    def _dump(self, tgid: int, tid: int, seq: int, start: int) -> None:
        assert self.pyspy is not None  # _check() dumps only with py-spy
        self.stats.dumps += 1
        at_ms = (time.monotonic_ns() - start) / 1e6
        text, cpu_s = run_dump(self.pyspy, tgid)
        self.stats.dump_cpu_s += cpu_s
        still = self._inflight().get(tid)
        found = thread_stack(text, tid) if text else None
        if found is None:
            self.stats.failed += 1
        elif still is None or still[1] != seq:
            self.stats.missed += 1
        else:
            self.stats.caught += 1
            self.caught[(tid, seq)] = CaughtStack(found.frames, found.state, round(at_ms, 2))


def run_dump(pyspy: str, pid: int) -> tuple[str, float]:
    """(py-spy dump output, CPU seconds py-spy used); empty text when it failed."""
    try:
        proc = subprocess.Popen([pyspy, "dump", "--nonblocking", "--pid", str(pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return "", 0.0
    assert proc.stdout is not None  # opened as a pipe just above
    text = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (text if proc.returncode == 0 else ""), usage.ru_utime + usage.ru_stime
