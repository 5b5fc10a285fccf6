"""Where a paired run's processes run: both servers on one CPU, the load generators on the others.

Two servers loaded at the same time on a 2-core VM, each next to its own
load generator, are scheduled anew every few milliseconds: which server
shares a core with which generator decides how often it sleeps and wakes,
and that moved one server's CPU per query against the other's by 30-40 %
from window to window. With both servers on one CPU and the generators on
the rest, each server always has work queued, both run on the same core at
the same speed, and the ratio spread fell to under 10 % (docs/lab.md).
Every task's own CPU set is put back afterwards, so an external server
(`--server/--pid`) is left as it was found.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import psutil

from tools.resources import process_tree


def tasks(pid: int) -> list[int]:
    """Every thread of the process and of its descendants."""
    out = []
    for proc in process_tree(pid):
        try:
            out += [t.id for t in proc.threads()]
        except psutil.Error:
            pass
    return out


@contextlib.contextmanager
def servers_apart(server_pids: list[int]) -> Iterator[dict]:
    """Pin the servers' trees to the last CPU this process may use and this process (whose threads
    fork the load generators) to the others; yields what was done, for the results."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield {"pinned": False, "why": "one CPU: nothing to separate"}
        return
    server_cpu, generator_cpus = {cpus[-1]}, set(cpus[:-1])
    saved: dict[int, set[int]] = {}
    try:
        for tid in [t for pid in server_pids for t in tasks(pid)]:
            _pin(tid, server_cpu, saved)
        for tid in tasks(os.getpid()):
            _pin(tid, generator_cpus, saved)
        yield {"pinned": True, "server_cpu": cpus[-1], "generator_cpus": sorted(generator_cpus)}
    finally:
        for tid, mask in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)


def _pin(tid: int, cpus: set[int], saved: dict[int, set[int]]) -> None:
    try:
        saved.setdefault(tid, os.sched_getaffinity(tid))
        os.sched_setaffinity(tid, cpus)
    except OSError:   # the thread ended, or is not ours to move: it runs where it was
        saved.pop(tid, None)
