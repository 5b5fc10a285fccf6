"""The standard `process_*` series for the server's whole process tree, and `heimdall_build_info`.

prometheus-client's own process collector sees one process; with N workers
that is one of N+1 (the supervisor and its workers), so dashboards built on
`process_cpu_seconds_total` would show a fraction of the truth. Here the
standard names carry the sums over the tree (start time: the tree's oldest
process, fd limit: the process serving /metrics), and `heimdall_process_*`
carries each process's figures with `pid` and `role` labels. Read from /proc
at scrape time, so nothing is added to the query path.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessFigures:
    pid: int
    role: str  # "supervisor", "worker" or "server" (one process serving alone)
    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    open_fds: int
    start_time: float  # seconds since the epoch


def boot_time() -> float:
    with open("/proc/stat") as f:
        return float(next(line.split()[1] for line in f if line.startswith("btime ")))


def read_process(pid: int, role: str, booted: float) -> ProcessFigures | None:
    """One process's figures, or None when it has gone (a worker may exit between listing and reading)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields[0] is the state (field 3 of proc(5)): utime is field 14, so fields[11]
    utime, stime, start, vsize, rss = (int(fields[i]) for i in (11, 12, 19, 20, 21))
    return ProcessFigures(pid, role, (utime + stime) / TICKS, rss * PAGE, vsize, open_fds, booted + start / TICKS)


def max_fds(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    return None


class ProcessTreeCollector(Collector):
    def __init__(self, tree_fn: Callable[[], list[tuple[int, str]]]) -> None:
        self.tree_fn = tree_fn  # (pid, role) of every process of the server, the supervisor first
        self.booted = boot_time()

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        procs = [p for pid, role in self.tree_fn() if (p := read_process(pid, role, self.booted)) is not None]
        yield CounterMetricFamily("process_cpu_seconds_total", "User and system CPU time of the server's processes",
                                  value=sum(p.cpu_seconds for p in procs))
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the server's processes",
                                value=sum(p.resident_bytes for p in procs))
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory of the server's processes",
                                value=sum(p.virtual_bytes for p in procs))
        yield GaugeMetricFamily("process_open_fds", "Open file descriptors of the server's processes",
                                value=sum(p.open_fds for p in procs))
        if procs:
            yield GaugeMetricFamily("process_start_time_seconds", "Start of the server's oldest process (epoch)",
                                    value=min(p.start_time for p in procs))
        limit = max_fds(os.getpid())
        if limit is not None:
            yield GaugeMetricFamily("process_max_fds", "Open file descriptor limit of each server process",
                                    value=limit)
        yield from per_process(procs)


def per_process(procs: list[ProcessFigures]) -> Iterator:
    families = (
        (CounterMetricFamily, "heimdall_process_cpu_seconds", "CPU time of one server process", "cpu_seconds"),
        (GaugeMetricFamily, "heimdall_process_resident_memory_bytes", "Resident memory of one server process",
         "resident_bytes"),
        (GaugeMetricFamily, "heimdall_process_open_fds", "Open file descriptors of one server process", "open_fds"),
    )
    for family_cls, name, help_text, attr in families:
        family = family_cls(name, help_text, labels=["pid", "role"])
        for p in procs:
            family.add_metric([str(p.pid), p.role], getattr(p, attr))
        yield family


class BuildInfoCollector(Collector):
    """`heimdall_build_info{version,hot_path,python} 1`: what is running, for joins in dashboards."""

    def __init__(self, version: str, hot_path: str) -> None:
        self.labels = [version, hot_path, platform.python_version()]

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        info = GaugeMetricFamily("heimdall_build_info", "Version, UDP hot path (c or python) and Python of the server",
                                 labels=["version", "hot_path", "python"])
        info.add_metric(self.labels, 1.0)
        yield info
