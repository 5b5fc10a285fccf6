"""loopprof: how long each event-loop iteration runs, and the stalls: on or off the CPU, and what ran.

Attaches probes/loopprof.bpf.c to a process tree. A loop thread is a thread
that waits in epoll (asyncio's selector, uvloop's libuv): an iteration is the
time from an epoll wait's return to that thread's next epoll wait, all of it
spent running callbacks. Iterations go into a log-linear histogram; a stall
(an iteration at or above --threshold-ms) is reported one by one with its
start, length, time off the CPU (blocked vs preempted, from sched_switch),
the kernel stack where it blocked longest, and the Python stack py-spy
dumped while it ran (probes/stallstacks.py). The probe's own cost is the
kernel's run-time count of its BPF programs (probes/bpfcost.py) plus the
watcher's and py-spy's CPU time.
"""

from __future__ import annotations

from typing import Any

from probes.base import Probe
from probes.bpfcost import BpfCost
from probes.doctor import tracepoint_exists
from probes.histogram import Histogram
from probes.proctree import heading, render_processes
from probes.stacks import symbolize
from probes.stallstacks import StallWatcher

KINDS = ("on-cpu", "off-cpu", "preempted")
MAX_STALL_ROWS = 2000
SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__do_sys_", "__se_sys_")


def stall_kind(length: int, blocked: int, runq: int) -> str:
    """off-cpu when most of the stall was off the CPU asleep/blocked, preempted when off it but
    runnable (waiting for a CPU), else on-cpu."""
    if blocked + runq <= length / 2:
        return "on-cpu"
    return "off-cpu" if blocked >= runq else "preempted"


def syscall_of(kernel_frames: list[str]) -> str | None:
    """The system call a kernel stack is in (`clock_nanosleep`), from its entry frame."""
    for frame in kernel_frames:
        name = frame.split("+", 1)[0]
        for prefix in SYSCALL_PREFIXES:
            if name.startswith(prefix):
                return name[len(prefix):]
    return None


def blocking_function(stack: list[str] | None) -> str | None:
    """The innermost Python frame: the function that ran (or called what blocked) in the stall."""
    return stack[0] if stack else None


class LoopProf(Probe):
    """Event-loop iterations and stalls of a process tree's epoll loop threads."""

    name = "loopprof"
    bpf_file = "loopprof.bpf.c"
    schema = "heimdall.loopprof/1"
    window_tables = ("iter_hist", "totals")
    proc_slots = ("iterations", "stalls", "stall_ns")

    def __init__(self, pid: int, threshold_ms: float = 10.0, stacks: bool = True, max_dumps: int = 200,
                 **opts: Any) -> None:
        super().__init__(pid, **opts)
        self.threshold_ns = int(threshold_ms * 1e6)
        self.want_stacks = stacks
        self.max_dumps = max_dumps
        self.events: list[dict] = []
        self.cost = BpfCost()
        self.watcher: StallWatcher | None = None
        self.stack_source = "none (--no-stacks)"

    def cflags(self) -> list[str]:
        flags = [f"-DTHRESHOLD_NS={self.threshold_ns}ULL"]
        return flags + [f"-DHAVE_{n.upper()}" for n in ("epoll_wait", "epoll_pwait2")
                        if tracepoint_exists(f"syscalls:sys_enter_{n}")]

    def attach_points(self, bpf) -> None:
        pyspy = None
        if self.want_stacks:
            from probes.cpuprof import find_pyspy
            from tools.errors import ToolError
            try:
                pyspy = find_pyspy()
                self.stack_source = f"py-spy dump --nonblocking ({pyspy})"
            except ToolError as exc:
                self.stack_source = f"none: {exc}"
        poll_s = min(max(self.threshold_ns / 2e9, 0.002), 0.010)
        self.watcher = StallWatcher(bpf, pyspy, self.threshold_ns, poll_s, self.max_dumps, self._on_event)

    def _on_event(self, _cpu: int, data: Any, _size: int) -> None:
        assert self.bpf is not None  # events arrive only while attached
        ev = self.bpf[b"stall_events"].event(data)
        self.events.append({"tgid": int(ev.tgid), "tid": int(ev.tid), "start_ns": int(ev.start),
                            "len_ns": int(ev.len), "blocked_ns": int(ev.blocked_ns), "runq_ns": int(ev.runq_ns),
                            "seq": int(ev.seq), "kstack": int(ev.kstack)})

    def start_window(self) -> None:
        assert self.bpf is not None and self.watcher is not None  # attach() ran
        self.events.clear()
        self.cost.begin(self.bpf)
        super().start_window()
        self.watcher.start()

    def close_window(self) -> None:
        if self.bpf is not None and self.window_end is None and self.window_start is not None:
            super().close_window()
            if self.watcher is not None:
                self.watcher.stop()
            self.cost.finish(self.bpf)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.cost.close()
        super().close()

    # --- reading ---------------------------------------------------------------
    def _stall_row(self, ev: dict, base_ns: int) -> dict:
        caught = self.watcher.caught.get((ev["tid"], ev["seq"])) if self.watcher else None
        kernel = symbolize(self.bpf, ev["kstack"], ev["tgid"], kernel=True, limit=12) if ev["kstack"] >= 0 else []
        py = caught.stack if caught else None
        return {"pid": ev["tgid"], "tid": ev["tid"],
                "start_ms": round((ev["start_ns"] - base_ns) / 1e6, 3), "start_ns": ev["start_ns"],
                "len_ms": round(ev["len_ns"] / 1e6, 3),
                "off_cpu_ms": round((ev["blocked_ns"] + ev["runq_ns"]) / 1e6, 3),
                "blocked_ms": round(ev["blocked_ns"] / 1e6, 3), "preempted_ms": round(ev["runq_ns"] / 1e6, 3),
                "kind": stall_kind(ev["len_ns"], ev["blocked_ns"], ev["runq_ns"]),
                "function": blocking_function(py), "syscall": syscall_of(kernel),
                "python_stack": py, "stack_at_ms": caught.at_ms if caught else None,
                "kernel_stack": kernel[:8]}

    @staticmethod
    def _summary(rows: list[dict]) -> dict:
        out: dict[str, Any] = {}
        for kind in KINDS:
            lens = sorted(r["len_ms"] for r in rows if r["kind"] == kind)
            out[kind] = {"count": len(lens), "total_ms": round(sum(lens), 3),
                         "median_ms": lens[len(lens) // 2] if lens else 0.0, "max_ms": lens[-1] if lens else 0.0}
        by_fn: dict[str, dict] = {}
        for r in rows:
            key = r["function"] or (f"[{r['syscall']}]" if r["syscall"] else "[unknown]")
            row = by_fn.setdefault(key, {"count": 0, "total_ms": 0.0, "kinds": {}})
            row["count"] += 1
            row["total_ms"] = round(row["total_ms"] + r["len_ms"], 3)
            row["kinds"][r["kind"]] = row["kinds"].get(r["kind"], 0) + 1
        out["by_function"] = dict(sorted(by_fn.items(), key=lambda kv: -kv[1]["total_ms"]))
        return out

    def _own_cost(self) -> dict:
        bpf_cost = self.cost.report(self.duration_s)
        w = self.watcher.stats if self.watcher else None
        user = {"watcher_cpu_s": round(w.watcher_cpu_s, 4), "pyspy_cpu_s": round(w.dump_cpu_s, 4)} if w else {}
        return {**bpf_cost, "user_space": user,
                "note": ("BPF time runs on every context switch of the machine (sched_switch) and on the "
                         "target's epoll calls; py-spy dumps read the target's memory without stopping it")}

    def processes(self) -> dict[int, dict]:
        procs = super().processes()
        for row in procs.values():
            row["stall_ms_total"] = round(row.pop("stall_ns") / 1e6, 3)
        return procs

    def read(self, queries: int | None) -> dict:
        totals = self.table("totals")
        iterations, stalls = (int(totals[totals.Key(i)].value) for i in (0, 1))
        hist = Histogram.from_table(self.table("iter_hist"))
        base_ns = int((self.window_start or 0.0) * 1e9)   # time.monotonic() is CLOCK_MONOTONIC too
        rows = sorted((self._stall_row(ev, base_ns) for ev in self.events), key=lambda r: r["start_ms"])
        w = self.watcher.stats if self.watcher else None
        return {
            "threshold_ms": self.threshold_ns / 1e6,
            "iterations": iterations,
            "iteration_us": hist.summary(1000.0),
            "iteration_histogram_us": hist.to_json(),
            "stalls": {"count": stalls, "events_received": len(rows), **self._summary(rows),
                       "list": rows[:MAX_STALL_ROWS], "list_truncated": len(rows) > MAX_STALL_ROWS},
            "stacks": {"source": self.stack_source, "dumps": w.dumps if w else 0, "caught": w.caught if w else 0,
                       "missed_stall_ended_first": w.missed if w else 0, "failed": w.failed if w else 0,
                       "skipped_over_budget": w.skipped if w else 0},
            "overhead": self._own_cost(),
        }

    # --- rendering -------------------------------------------------------------
    @classmethod
    def render(cls, result: dict, console) -> None:
        from rich.markup import escape
        from rich.table import Table

        head = heading("loopprof", result)
        console.print(head, highlight=False)
        it, st = result["iteration_us"], result["stalls"]
        console.print(f"iterations {result['iterations']}  p50 {it['p50']:.1f} us  p99 {it['p99']:.1f} us  "
                      f"max {it['max']:.0f} us;  stalls >= {result['threshold_ms']:g} ms: {st['count']} "
                      f"(on-cpu {st['on-cpu']['count']}, off-cpu {st['off-cpu']['count']}, "
                      f"preempted {st['preempted']['count']})", highlight=False)
        render_processes(result, console, [("iterations", "iterations"), ("stalls", "stalls"),
                                           ("stall ms", "stall_ms_total")])
        table = Table(title="stalls by what ran (innermost Python frame, else the syscall it blocked in)")
        for col in ("function", "stalls", "total ms", "kinds"):
            table.add_column(col, overflow="fold")
        for fn, row in list(st["by_function"].items())[:15]:
            table.add_row(escape(fn), str(row["count"]), f"{row['total_ms']:.1f}",
                          ", ".join(f"{k} {v}" for k, v in row["kinds"].items()))
        console.print(table)
        s = result["stacks"]
        console.print(f"Python stacks: {escape(s['source'])}; {s['caught']} caught in {s['dumps']} dumps, "
                      f"{s['missed_stall_ended_first']} stalls ended before the dump", highlight=False)
        o = result["overhead"]
        if o.get("measured"):
            console.print(f"own cost: BPF {o['bpf_ns'] / 1e6:.1f} ms over {o['bpf_runs']} runs "
                          f"({100 * o['bpf_cpu_share']:.3f}% of {o['cpus']} CPUs); user space "
                          f"{o['user_space']}", highlight=False)
        lost = {k: v for k, v in result["lost"].items() if v}
        console.print(f"lost: {lost if lost else 'none'}", highlight=False)
