"""The process tree a probe watches: the BPF target map, per-process figures, their table.

A probe given a pid watches that process and all its descendants (a
supervisor and its workers). probes/common.bpf.h keeps the watched tgids in
`heimdall_targets` and follows forks and exits in the kernel; this module
seeds that map from /proc when the probe attaches (and again when the window
opens), and reads `heimdall_procs` into the per-process figures of a result:
`pids` (every process watched during the window, sorted) and `processes`
({"<pid>": {"comm": ..., <the probe's counters>}}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from probes.doctor import TRACEFS

SEED_ROUNDS = 5    # rescans until a scan finds no process the map lacks


def tree_pids(pid: int) -> list[int]:
    """pid and its descendants alive now, pid first."""
    from tools.resources import process_tree

    return [p.pid for p in process_tree(pid)]


def exit_flags() -> list[str]:
    """-DHAVE_EXIT_GROUP_DEAD when sched_process_exit says whether the thread group is gone."""
    fmt = Path(TRACEFS, "events", "sched", "sched_process_exit", "format")
    try:
        return ["-DHAVE_EXIT_GROUP_DEAD"] if "group_dead;" in fmt.read_text() else []
    except OSError:
        return []


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def seed_targets(bpf, root: int) -> int:
    """Put root and its descendants in heimdall_targets; returns how many did not fit.

    The kernel side already follows forks of the processes in the map, so a
    rescan after inserting catches only children forked by a process before
    it was inserted; a few rounds close that gap."""
    table = bpf[b"heimdall_targets"]
    known = {k.value for k in table.keys()}
    lost = 0
    for _ in range(SEED_ROUNDS):
        new = [p for p in tree_pids(root) if p not in known]
        if not new:
            break
        for pid in new:
            known.add(pid)
            try:
                table[table.Key(pid)] = table.Leaf(0)
            except Exception:  # noqa: BLE001 - the map is full
                lost += 1
                continue
            if not pid_alive(pid):    # exited between the scan and the insert: its exit was not seen
                try:
                    del table[table.Key(pid)]
                except KeyError:
                    pass
    return lost


def watched(bpf) -> dict[int, int]:
    """tgid -> fork time (CLOCK_MONOTONIC ns; 0 when it was there at attach) of every watched process."""
    return {k.value: int(v.value) for k, v in bpf[b"heimdall_targets"].items()}


def proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def reset_procs(bpf) -> None:
    """Start the window's per-process figures: zeroed, one entry per watched process."""
    table = bpf[b"heimdall_procs"]
    table.clear()
    for pid in watched(bpf):
        leaf = table.Leaf()
        leaf.comm = proc_comm(pid).encode()[:15]
        try:
            table[table.Key(pid)] = leaf
        except Exception:  # noqa: BLE001 - full: the kernel counts the process's events as map_full
            pass


def read_procs(bpf, slots: Iterable[str]) -> dict[int, dict[str, Any]]:
    """pid -> {"comm", slot name: counter} from heimdall_procs.

    A process still watched is named from /proc (its name after any exec);
    one that exited keeps the name the kernel saw at its exit."""
    names = list(slots)
    live = watched(bpf)
    out: dict[int, dict[str, Any]] = {}
    for key, val in bpf[b"heimdall_procs"].items():
        pid = key.value
        comm = proc_comm(pid) if pid in live else ""
        row: dict[str, Any] = {"comm": comm or val.comm.decode(errors="replace") or "?"}
        for i, name in enumerate(names):
            row[name] = int(val.c[i])
        out[pid] = row
    return dict(sorted(out.items()))


def tree_note(result: dict) -> str:
    """", N processes" for a heading when the window saw more than one, else ""."""
    n = len(result.get("pids") or [])
    return f", {n} processes" if n > 1 else ""


def heading(probe: str, result: dict) -> str:
    """A result's first line: probe, pid, command, processes, window, and PARTIAL with why."""
    partial = f" [yellow]PARTIAL: {result.get('end_reason', 'target exited')}[/]" if result["partial"] else ""
    return (f"{probe} pid {result['pid']} ({result['comm']}){tree_note(result)} window "
            f"{result['duration_s']:.2f}s{partial}")


def render_processes(result: dict, console, columns: list[tuple[str, str]],
                     fmt: Callable[[Any], str] = str) -> None:
    """A row per process (pid, comm, the main figures) when the window saw more than one."""
    procs = result.get("processes") or {}
    if len(result.get("pids") or []) <= 1 or not procs:
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"per process ({len(procs)} processes)")
    table.add_column("pid", justify="right")
    table.add_column("comm")
    for label, _key in columns:
        table.add_column(label, justify="right")
    for pid, row in procs.items():
        table.add_row(pid, escape(str(row.get("comm", "?"))), *(fmt(row.get(key, "")) for _label, key in columns))
    console.print(table)


def ensure_listed(procs: dict[int, dict], pids: Iterable[int], blank: dict[str, Any]) -> None:
    """Add a zero row for a pid seen elsewhere in the maps but missing from heimdall_procs."""
    for pid in pids:
        if pid and pid not in procs:
            procs[pid] = {"comm": proc_comm(pid) or "?", **blank}
