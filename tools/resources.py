"""Once-a-second psutil samples of the server's process tree -> resource_usage.csv.

Covers the server pid and its children (Heimdall's workers), so CPU% can
exceed 100 with several processes. Context switches are the per-second
increase, not the kernel's running totals, so a row reads on its own.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from heimdall.atomic import atomic_write_text

COLUMNS = ("time_s", "scenario", "cpu_percent", "rss_bytes", "vms_bytes", "threads", "processes",
           "ctx_voluntary_per_s", "ctx_involuntary_per_s")


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants that exist right now."""
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds the server tree has used so far (None when it is gone)."""
    total, seen = 0.0, False
    for proc in process_tree(pid):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
        seen = True
    return total if seen else None


def system_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, every core summed."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


@dataclass
class ResourceSampler:
    """Background thread sampling pid's tree every `interval` seconds."""

    pid: int
    interval: float = 1.0
    scenario: str = ""
    rows: list[dict] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _t0: float = field(default=0.0, repr=False)

    def start(self) -> "ResourceSampler":
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _totals(self) -> tuple[float, dict]:
        cpu = rss = vms = threads = vol = invol = 0
        procs = process_tree(self.pid)
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    m = p.memory_info()
                    c = p.num_ctx_switches()
                    cpu += t.user + t.system
                    rss += m.rss
                    vms += m.vms
                    threads += p.num_threads()
                    vol += c.voluntary
                    invol += c.involuntary
            except psutil.Error:
                continue
        return time.monotonic(), dict(cpu=cpu, rss=rss, vms=vms, threads=threads, procs=len(procs),
                                      vol=vol, invol=invol)

    def _run(self) -> None:
        prev_t, prev = self._totals()
        while not self._stop.wait(self.interval):
            now, cur = self._totals()
            if not cur["procs"]:
                break
            dt = max(now - prev_t, 1e-6)
            self.rows.append({
                "time_s": round(now - self._t0, 3),
                "scenario": self.scenario,
                "cpu_percent": round(100.0 * max(cur["cpu"] - prev["cpu"], 0.0) / dt, 1),
                "rss_bytes": cur["rss"],
                "vms_bytes": cur["vms"],
                "threads": cur["threads"],
                "processes": cur["procs"],
                "ctx_voluntary_per_s": round(max(cur["vol"] - prev["vol"], 0) / dt, 1),
                "ctx_involuntary_per_s": round(max(cur["invol"] - prev["invol"], 0) / dt, 1),
            })
            prev_t, prev = now, cur

    def write_csv(self, path: str | Path) -> Path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        return atomic_write_text(path, buf.getvalue())

    def __enter__(self) -> "ResourceSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
