"""Uprobes in every process of a watched tree, also in processes that join it later.

A uprobe attached for a pid fires only in that process: a forked child does
not inherit it (and a system-wide uprobe would trap every process on the
machine). `UprobeTree` attaches a probe's uprobes in each process of the tree
when the probe attaches; then a thread polls the kernel's target map
(probes/common.bpf.h adds a forked process to it before the child first runs)
and attaches in each new process. That process's calls count from then on:
`summary()` says how many processes were followed and how long after their
fork the uprobes were in place. Detaching a uprobe waits for the kernel's
grace periods (tens of ms each), so the uprobes of processes that left the
tree stay (costing nothing) until the probe closes, unless more than
MAX_HELD processes hold them: then one gone process is detached per round.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any, Callable

from probes.proctree import watched

FOLLOW_S = 0.005    # how often the thread looks for new processes in the tree
MAX_HELD = 64       # processes whose uprobes are kept attached after they left the tree


class UprobeTree:
    """Per-process uprobes over a process tree; `attach_one(bpf, pid)` attaches in one process."""

    def __init__(self, attach_one: Callable[[Any, int], None], interval: float = FOLLOW_S) -> None:
        self.attach_one = attach_one
        self.interval = interval
        self.events: dict[int, set[bytes]] = {}    # pid -> its uprobe event names
        self.failed: set[int] = set()
        self.lags_ms: list[float] = []             # fork -> uprobes attached, per followed process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach_all(self, bpf, root: int) -> None:
        """Attach in every watched process, root first; root's failure raises, others are skipped."""
        for pid in sorted(watched(bpf), key=lambda p: (p != root, p)):
            self.attach(bpf, pid, required=pid == root)

    def attach(self, bpf, pid: int, required: bool = False) -> bool:
        """All of a process's uprobes or none: False (or the error, when required) on failure."""
        before = set(bpf.uprobe_fds)
        try:
            self.attach_one(bpf, pid)
        except Exception:
            for ev in set(bpf.uprobe_fds) - before:
                self._detach(bpf, ev)
            if required:
                raise
            self.failed.add(pid)
            return False
        self.events[pid] = set(bpf.uprobe_fds) - before
        return True

    @staticmethod
    def _detach(bpf, ev: bytes) -> None:
        try:
            bpf.detach_uprobe_event(ev)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def start(self, bpf) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, args=(bpf,), name="uprobe-follow", daemon=True)
        self._thread.start()

    def _follow(self, bpf) -> None:
        while not self._stop.wait(self.interval):
            try:
                live = watched(bpf)
            except Exception:  # noqa: BLE001 - the maps are being torn down
                return
            for pid, forked_ns in live.items():
                if pid in self.events or pid in self.failed or self._stop.is_set():
                    continue
                if self.attach(bpf, pid) and forked_ns:
                    self.lags_ms.append((time.monotonic_ns() - forked_ns) / 1e6)
            gone = [p for p in self.events if p not in live]
            if gone and len(self.events) > MAX_HELD:
                for ev in self.events.pop(gone[0]):
                    self._detach(bpf, ev)

    def stop(self) -> None:
        """Stop following (before the BPF object is cleaned up); safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None

    def summary(self) -> dict:
        lags = self.lags_ms
        return {"processes": len(lags), "failed": len(self.failed),
                "lag_ms_median": round(statistics.median(lags), 2) if lags else None,
                "lag_ms_max": round(max(lags), 2) if lags else None}
