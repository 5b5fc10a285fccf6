"""offcpu: where the threads of a process tree wait off the CPU, and why (kernel stacks).

Attaches probes/offcpu.bpf.c (sched:sched_switch, sched:sched_wakeup, the
epoll wait syscalls) to a process tree. Each stretch a watched thread spends
off the CPU is charged to the thread, its state when it left (preempted
while runnable, asleep, uninterruptible) and the kernel stack that took it
off; the wake-up splits it into blocked time and the wait for a CPU after.
Time a thread spends asleep inside an epoll wait is an idle event loop and
is reported apart (`idle_epoll`), never in the totals or the stacks. The
folded output (`thread;kernel frames;[state] microseconds`) is what
probes/flamegraph.py draws.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.base import Probe
from probes.bpfcost import BpfCost
from probes.doctor import tracepoint_exists
from probes.flamegraph import render_svg, to_folded
from probes.histogram import Histogram
from probes.lockprof import thread_comm
from probes.loopprof import syscall_of
from probes.proctree import heading, render_processes, watched
from probes.stacks import symbolize

STATES = ("preempted", "sleeping", "uninterruptible", "other")
SEEDED = -1000   # kstack of a stretch that began before attach (seen asleep in /proc at window open)


def ms(ns: float) -> float:
    return round(ns / 1e6, 3)


@dataclass
class OpenStretch:
    """A thread still off the CPU when the window closed: counted from its start (or the window's) to the close."""

    tgid: int
    tid: int
    kstack: int
    state: int
    idle: bool
    begin_ns: int
    woken_ns: int
    end_ns: int

    @property
    def length(self) -> int:
        return self.end_ns - self.begin_ns


def open_stretches(table, win_start_ns: int, win_end_ns: int) -> list[OpenStretch]:
    """The off_start entries of threads off the CPU at the close (back_at: came back after it, or 0)."""
    out = []
    for k, v in table.items():
        back, ts = int(v.back_at), int(v.ts)
        if ts >= win_end_ns or (back and back <= win_end_ns):
            continue    # left after the close, or came back before it (counted by BPF, or before the window)
        out.append(OpenStretch(int(v.tgid), k.value, int(v.kstack), int(v.state), bool(v.idle),
                               max(ts, win_start_ns), int(v.woken), win_end_ns))
    return out


def epoll_syscalls() -> set[int]:
    """Numbers of the epoll wait syscalls on this machine, as /proc/<tid>/syscall shows them."""
    return {"x86_64": {232, 281, 441}, "aarch64": {22, 441}}.get(platform.machine(), set())


def asleep_threads(pids: list[int]) -> list[tuple[int, int, bool]]:
    """(tgid, tid, in an epoll wait) of every thread of pids asleep now (state S or D)."""
    epoll = epoll_syscalls()
    out = []
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                state = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()[0]
                call = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            except (OSError, IndexError):
                continue
            if state in ("S", "D"):
                out.append((pid, tid, bool(call) and call[0].lstrip("-").isdigit() and int(call[0]) in epoll))
    return out


class OffCpu(Probe):
    """Off-CPU time of a process tree's threads per kernel reason, idle epoll waits apart."""

    name = "offcpu"
    bpf_file = "offcpu.bpf.c"
    schema = "heimdall.offcpu/1"
    window_tables = ("off_stats", "threads", "off_hist")   # off_start runs through: stretches begun before
    proc_slots = ("offcpu_ns", "switches", "idle_epoll_ns")

    def __init__(self, pid: int, top: int = 15, **opts: Any) -> None:
        super().__init__(pid, **opts)
        self.top = top
        self.cost = BpfCost()
        self.win_start_ns = 0
        self.open: list[OpenStretch] = []   # stretches still off the CPU when the window closed

    def cflags(self) -> list[str]:
        return [f"-DHAVE_{n.upper()}" for n in ("epoll_wait", "epoll_pwait2")
                if tracepoint_exists(f"syscalls:sys_enter_{n}")]

    def start_window(self) -> None:
        assert self.bpf is not None  # attach() ran
        self.cost.begin(self.bpf)
        self.open = []
        win = self.table("win_start")
        self.win_start_ns = time.monotonic_ns()   # CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns
        win[win.Key(0)] = win.Leaf(self.win_start_ns)
        self._seed_sleepers()
        super().start_window()

    def _seed_sleepers(self) -> None:
        """Threads asleep since before attach never switched out under the probe: start their stretch at
        the window's start (no kernel stack; idle when /proc shows them in an epoll wait)."""
        table = self.table("off_start")
        known = {k.value for k in table.keys()}
        for tgid, tid, idle in asleep_threads(sorted(watched(self.bpf))):
            if tid not in known:
                table[table.Key(tid)] = table.Leaf(ts=self.win_start_ns, tgid=tgid, state=1, kstack=SEEDED,
                                                   idle=int(idle))

    def close_window(self) -> None:
        if self.bpf is not None and self.window_end is None and self.window_start is not None:
            super().close_window()
            self.cost.finish(self.bpf)
            self.open = open_stretches(self.table("off_start"), self.win_start_ns, time.monotonic_ns())

    def close(self) -> None:
        self.cost.close()
        super().close()

    def processes(self) -> dict[int, dict]:
        procs = super().processes()
        for st in self.open:
            if st.tgid in procs:
                procs[st.tgid]["idle_epoll_ns" if st.idle else "offcpu_ns"] += st.length
                procs[st.tgid]["switches"] += 0 if st.idle else 1
        for row in procs.values():
            row["offcpu_ms"] = ms(row.pop("offcpu_ns"))
            row["idle_epoll_ms"] = ms(row.pop("idle_epoll_ns"))
        return procs

    # --- reading ---------------------------------------------------------------
    def _threads(self) -> list[dict]:
        acc: dict[int, dict] = {}
        for k, v in self.table("threads").items():
            acc[k.value] = {"pid": int(v.tgid), "tid": k.value, "comm": v.comm.decode(errors="replace"),
                            "offcpu_ns": int(v.offcpu_ns), "switches": int(v.switches),
                            "idle_ns": int(v.idle_ns), "idle_waits": int(v.idle_waits)}
        for st in self.open:
            row = acc.setdefault(st.tid, {"pid": st.tgid, "tid": st.tid, "comm": thread_comm(st.tgid, st.tid),
                                          "offcpu_ns": 0, "switches": 0, "idle_ns": 0, "idle_waits": 0})
            row["idle_ns" if st.idle else "offcpu_ns"] += st.length
            row["idle_waits" if st.idle else "switches"] += 1
        rows = [{"pid": r["pid"], "tid": r["tid"], "comm": r["comm"], "offcpu_ms": ms(r["offcpu_ns"]),
                 "switches": r["switches"], "idle_epoll_ms": ms(r["idle_ns"]), "idle_epoll_waits": r["idle_waits"]}
                for r in acc.values()]
        return sorted(rows, key=lambda r: -r["offcpu_ms"])

    def _stack_rows(self, comms: dict[int, str]) -> list[dict]:
        acc: dict[tuple[int, int, int, int], list[int]] = {}   # key -> [total, blocked, runq, count, max]
        for k, v in self.table("off_stats").items():
            acc[(int(k.tgid), int(k.tid), int(k.kstack), int(k.state))] = [
                int(v.total_ns), int(v.blocked_ns), int(v.runq_ns), int(v.count), int(v.max_ns)]
        for st in self.open:
            if not st.idle:
                a = acc.setdefault((st.tgid, st.tid, st.kstack, st.state), [0, 0, 0, 0, 0])
                woke = min(max(st.woken_ns or st.end_ns, st.begin_ns), st.end_ns)
                a[0] += st.length
                a[1] += woke - st.begin_ns
                a[2] += st.end_ns - woke
                a[3] += 1
                a[4] = max(a[4], st.length)
        rows = []
        for (tgid, tid, kstack, state), (total, blocked, runq, count, top) in acc.items():
            frames = symbolize(self.bpf, kstack, tgid, kernel=True, limit=32) if kstack >= 0 else []
            label = "[asleep since before the window]" if kstack == SEEDED else f"[stack error {kstack}]"
            rows.append({"pid": tgid, "tid": tid, "comm": comms.get(tid, "?"), "state": STATES[min(state, 3)],
                         "count": count, "total_ms": ms(total), "blocked_ms": ms(blocked), "runq_ms": ms(runq),
                         "max_ms": ms(top), "syscall": syscall_of(frames),
                         "kernel_stack": [f.split("+", 1)[0] for f in frames] if frames else
                         [label]})
        return sorted(rows, key=lambda r: -r["total_ms"])

    @staticmethod
    def folded(rows: list[dict]) -> dict[str, int]:
        """"thread;kernel frames (outermost first);[state]" -> microseconds, for probes/flamegraph.py."""
        stacks: dict[str, int] = {}
        for r in rows:
            thread = f"{r['comm']}-{r['tid']}".replace(";", "_").replace(" ", "_")
            key = ";".join((thread, *reversed(r["kernel_stack"]), f"[{r['state']}]"))
            stacks[key] = stacks.get(key, 0) + int(round(r["total_ms"] * 1000))
        return {k: v for k, v in stacks.items() if v}

    @staticmethod
    def _by(rows: list[dict], field: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for r in rows:
            name = r[field] or "-"
            acc = out.setdefault(name, {"total_ms": 0.0, "count": 0})
            acc["total_ms"] = round(acc["total_ms"] + r["total_ms"], 3)
            acc["count"] += r["count"]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["total_ms"]))

    def read(self, queries: int | None) -> dict:
        threads = self._threads()
        rows = self._stack_rows({t["tid"]: t["comm"] for t in threads})
        off = Histogram.from_table(self.table("off_hist"), slot=0)
        idle = Histogram.from_table(self.table("off_hist"), slot=1)
        return {
            "offcpu_ms": round(sum(t["offcpu_ms"] for t in threads), 3),
            "switches": sum(t["switches"] for t in threads),
            "idle_epoll_ms": round(sum(t["idle_epoll_ms"] for t in threads), 3),
            "idle_epoll_waits": sum(t["idle_epoll_waits"] for t in threads),
            "stretch_us": off.summary(1000.0), "stretch_histogram_us": off.to_json(),
            "idle_epoll_stretch_us": idle.summary(1000.0),
            "by_state": self._by(rows, "state"), "by_syscall": self._by(rows, "syscall"),
            "threads": threads, "top": rows[: self.top],
            "stacks": self.folded(rows),
            "overhead": {**self.cost.report(self.duration_s),
                         "note": "sched_switch and sched_wakeup programs run for every context switch and "
                                 "wake-up of the machine, not only the target's"},
        }

    # --- rendering -------------------------------------------------------------
    @classmethod
    def render(cls, result: dict, console) -> None:
        from rich.markup import escape
        from rich.table import Table

        head = heading("offcpu", result)
        console.print(head, highlight=False)
        console.print(f"off CPU {result['offcpu_ms']:.1f} ms in {result['switches']} stretches; idle in epoll "
                      f"(not counted) {result['idle_epoll_ms']:.1f} ms in {result['idle_epoll_waits']} waits",
                      highlight=False)
        render_processes(result, console, [("off-CPU ms", "offcpu_ms"), ("switches", "switches"),
                                           ("idle epoll ms", "idle_epoll_ms")])
        tt = Table(title="threads")
        for col in ("pid/tid", "comm", "off-CPU ms", "stretches", "idle epoll ms"):
            tt.add_column(col)
        for t in result["threads"][:20]:
            tt.add_row(f"{t['pid']}/{t['tid']}", escape(t["comm"]), f"{t['offcpu_ms']:.1f}", str(t["switches"]),
                       f"{t['idle_epoll_ms']:.1f}")
        console.print(tt)
        st = Table(title="top off-CPU reasons (thread, state, kernel stack)")
        for col in ("tid", "state", "syscall", "count", "total ms", "blocked ms", "runq ms", "max ms", "kernel"):
            st.add_column(col, overflow="fold")
        for r in result["top"]:
            inner = next((f for f in r["kernel_stack"] if "schedule" not in f), r["kernel_stack"][0])
            st.add_row(str(r["tid"]), r["state"], r["syscall"] or "-", str(r["count"]), f"{r['total_ms']:.1f}",
                       f"{r['blocked_ms']:.1f}", f"{r['runq_ms']:.1f}", f"{r['max_ms']:.1f}", escape(inner))
        console.print(st)
        o = result["overhead"]
        if o.get("measured"):
            console.print(f"own cost: BPF {o['bpf_ns'] / 1e6:.1f} ms over {o['bpf_runs']} runs "
                          f"({100 * o['bpf_cpu_share']:.3f}% of {o['cpus']} CPUs)", highlight=False)
        lost = {k: v for k, v in result["lost"].items() if v}
        console.print(f"lost: {lost if lost else 'none'}", highlight=False)


def write_flame(result: dict, folded_path: str | None, svg_path: str | None) -> None:
    """The folded stacks (microseconds off the CPU) and, if asked, their flame graph."""
    from tools.files import write_text

    stacks = {tuple(k.split(";")): v for k, v in result["stacks"].items()}
    if folded_path:
        write_text(folded_path, to_folded(stacks))
    if svg_path:
        write_text(svg_path, render_svg(stacks, f"offcpu pid {result['pid']} ({result['comm']}): "
                                                f"off-CPU microseconds, idle epoll waits excluded"))
