"""memprof: libc allocation calls of a process tree, and what counting them costs.

Attaches probes/memprof.bpf.c as entry uprobes on libc malloc, calloc,
realloc, free, posix_memalign, aligned_alloc, and with `pymalloc=True` on
CPython's PyObject_Malloc/Calloc/Realloc/Free, in each process of the
target's tree, following processes that join it (probes/uprobetree.py).
Uprobes trap into the kernel on every call (microseconds each), so before
attaching to the target we time a malloc+free loop in a helper process with
and without the same probes and report the per-call cost and the estimated
share of the target's time (`overhead`). With `outstanding=True` return
probes on the allocating functions also track the blocks still live at the
end of the window and their growth (probes/outstanding.py).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from probes import outstanding as live
from probes.base import Probe, per_query
from probes.doctor import PROBE_UPROBES, resolve_uprobe
from probes.histogram import Histogram
from probes.proctree import heading, render_processes
from probes.stacks import exe_name, stack_note, symbolize
from probes.uprobetree import UprobeTree
from tools.errors import EXIT_ENVIRONMENT, ToolError

LIBC_FNS = ("malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc")
PY_FNS = ("PyObject_Malloc", "PyObject_Calloc", "PyObject_Realloc", "PyObject_Free")
PY_HANDLERS = ("py_malloc_enter", "py_calloc_enter", "py_realloc_enter", "py_free_enter")
FN_NAMES = LIBC_FNS + PY_FNS
ALLOC_SLOTS = (0, 1, 2, 4, 5)      # libc functions that allocate
PY_ALLOC_SLOTS = (6, 7, 8)

CPYTHON_NOTE = ("CPython serves objects of <= 512 bytes from its pymalloc arenas (themselves mmap'd), so libc "
                "malloc counts here are larger objects, raw buffers and C extensions (uvloop/libuv) only; "
                "use --pymalloc for CPython's object layer, or run the target with PYTHONMALLOC=malloc "
                "to send every allocation through libc")

CALIBRATION_CODE = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None)
m, f = libc.malloc, libc.free
m.restype, m.argtypes, f.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    t = time.thread_time_ns()
    for _ in range(n):
        f(m(64))
    print((time.thread_time_ns() - t) / n, flush=True)
"""


def find_libpython(pid: int) -> str | None:
    """Path of the module holding PyObject_Malloc in the target: libpython or the executable."""
    candidates = []
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and "libpython" in parts[5] and parts[5] not in candidates:
                candidates.append(parts[5])
        candidates.append(os.path.realpath(f"/proc/{pid}/exe"))
    except OSError:
        return None
    for path in candidates:
        try:
            resolve_uprobe(path, "PyObject_Malloc", pid)
            return path
        except Exception:
            continue
    return None


class Calibrator:
    """Times malloc+free pairs in a helper process without and with memprof's probes, in the helper's
    CPU time: a uprobe's trap and BPF program run on the probed thread and are charged to it, while
    wall time also counts the minutes another process held the core (seen here: 2x apart)."""

    def __init__(self, sample: int, iterations: int = 20000, rounds: int = 3, outstanding: bool = False) -> None:
        self.sample = sample
        self.outstanding = outstanding
        self.iterations = iterations
        self.rounds = rounds

    def _round(self, proc: subprocess.Popen) -> float:
        assert proc.stdin is not None and proc.stdout is not None  # measure() opens both as pipes
        proc.stdin.write(f"{self.iterations}\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    def measure(self) -> dict:
        proc = subprocess.Popen([sys.executable, "-c", CALIBRATION_CODE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None  # both opened as pipes just above
        try:
            proc.stdout.readline()
            self._round(proc)  # warm caches and the allocator
            without = [self._round(proc) for _ in range(self.rounds)]
            probe = MemProf(proc.pid, sample=self.sample, overhead=False, outstanding=self.outstanding)
            probe.attach()
            try:
                probe.open_window()
                with_probe = [self._round(proc) for _ in range(self.rounds)]
                counted = probe.counts()
            finally:
                probe.close()
            without += [self._round(proc) for _ in range(self.rounds)]
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
        base, probed = statistics.median(without), statistics.median(with_probe)
        expected = 2 * self.iterations * self.rounds
        return {
            "method": ("median CPU ns per malloc+free pair in a helper loop, without and with these uprobes "
                       + ("(and malloc's return probe) " if self.outstanding else "")
                       + f"({self.rounds} rounds x {self.iterations} pairs each)"),
            "ns_per_pair_without": round(base, 1),
            "ns_per_pair_with": round(probed, 1),
            "probe_cost_us_per_call": round(max(probed - base, 0.0) / 2 / 1000.0, 3),
            "calls_counted_in_calibration": counted["malloc"] + counted["free"],
            "calls_expected_in_calibration": expected,
        }


class MemProf(Probe):
    """libc (and optionally CPython object) allocation calls of a process tree."""

    name = "memprof"
    bpf_file = "memprof.bpf.c"
    schema = "heimdall.memprof/1"
    window_tables: tuple[str, ...] = ("fn_stats", "size_hist", "sample_ctr", "stack_stats", "stacks")
    proc_slots = ("alloc_calls", "alloc_bytes", "frees", "pymalloc_calls")

    def __init__(self, pid: int, sample: int = 100, top: int = 10, pymalloc: bool = False,
                 overhead: bool = True, outstanding: bool = False, live_max: int = live.LIVE_MAX, **opts) -> None:
        super().__init__(pid, **opts)
        self.sample = max(1, int(sample))
        self.top = top
        self.pymalloc = pymalloc
        self.want_overhead = overhead
        self.attached: list[str] = []
        self.pymalloc_status = "not requested (--pymalloc)"
        self.calibration: dict | None = None
        self.uprobes = UprobeTree(self._attach_in)
        self.outstanding = outstanding
        self.live_max = max(1, int(live_max))
        self.growth: live.GrowthSampler | None = None
        if outstanding:
            self.window_tables = (*self.window_tables, "live", "pending", "live_totals")
            self.growth = live.GrowthSampler(lambda: live.read_totals(self.bpf))

    def cflags(self) -> list[str]:
        extra = ["-DOUTSTANDING", f"-DLIVE_MAX={self.live_max}"] if self.outstanding else []
        return [f"-DSAMPLE_N={self.sample}", *extra]

    def attach(self) -> None:
        if self.want_overhead and self.calibration is None:
            from probes.doctor import ensure_ready
            ensure_ready(self.name, self.pid)
            self.calibration = Calibrator(self.sample, outstanding=self.outstanding).measure()
        super().attach()
        self.uprobes.start(self.bpf)

    def attach_points(self, bpf) -> None:
        self.uprobes.attach_all(bpf, self.pid)

    def _attach_in(self, bpf, pid: int) -> None:
        """The uprobes in one process (what the pid itself takes is listed in `attached`)."""
        attached = []
        for lib, sym, required in PROBE_UPROBES["memprof"]:
            try:
                path = resolve_uprobe(lib, sym, pid)
                bpf.attach_uprobe(name=path.encode(), sym=sym.encode(), fn_name=f"{sym}_enter".encode(), pid=pid)
                if self.outstanding and sym in live.RETURN_FNS:
                    bpf.attach_uretprobe(name=path.encode(), sym=sym.encode(), fn_name=live.RETURN_HANDLER.encode(),
                                         pid=pid)
                attached.append(sym)
            except Exception as exc:
                if required:
                    raise ToolError(f"memprof cannot attach uprobe {lib}:{sym} in pid {pid}: {exc}",
                                    EXIT_ENVIRONMENT) from None
        status = self._attach_pymalloc(bpf, pid, attached) if self.pymalloc else self.pymalloc_status
        if pid == self.pid:
            self.attached, self.pymalloc_status = attached, status

    @staticmethod
    def _attach_pymalloc(bpf, pid: int, attached: list[str]) -> str:
        path = find_libpython(pid)
        if path is None:
            return "unavailable: PyObject_Malloc not found in the target (not CPython?)"
        for sym, handler in zip(PY_FNS, PY_HANDLERS):
            bpf.attach_uprobe(name=path.encode(), sym=sym.encode(), fn_name=handler.encode(), pid=pid)
            attached.append(sym)
        return f"attached in {path}"

    def start_window(self) -> None:
        super().start_window()
        if self.growth is not None:
            self.growth.start()

    def close_window(self) -> None:
        self.uprobes.stop()
        if self.growth is not None and self.window_end is None:
            self.growth.stop()
        super().close_window()

    def close(self) -> None:
        self.uprobes.stop()
        if self.growth is not None:
            self.growth.stop()
        super().close()

    def processes(self) -> dict[int, dict]:
        procs = super().processes()
        if not self.pymalloc:
            for row in procs.values():
                row.pop("pymalloc_calls", None)
        return procs

    # --- reading ---------------------------------------------------------------
    def _fn_stats(self) -> dict[str, dict]:
        table = self.table("fn_stats")
        out = {}
        for i, name in enumerate(FN_NAMES):
            v = table[table.Key(i)]
            out[name] = {"calls": int(v.calls), "bytes": int(v.bytes), "null_or_zero": int(v.null_or_zero)}
        return out

    def counts(self) -> dict[str, int]:
        """Calls per function so far (used by calibration and tests)."""
        return {k: v["calls"] for k, v in self._fn_stats().items()}

    def _frames(self, stack_id: int, caller: int, pid: int) -> list[str]:
        """Innermost frame, then the direct caller read at entry, then the rest of the walk."""
        bpf = self.bpf
        assert bpf is not None  # called from read(), inside collect(), after attach()
        pid = pid or self.pid
        frames = symbolize(bpf, stack_id, pid)
        if caller:
            try:
                name = bpf.sym(caller, pid, show_module=True, show_offset=True)
                name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            except Exception:
                name = "[unknown]"
            name = f"0x{caller:x}" if name.startswith("[unknown]") else name
            if stack_id < 0:
                return [name]
            if len(frames) < 2 or frames[1] != name:
                frames.insert(1, name)
        return frames

    def _top_stacks(self, layer: int) -> tuple[list[dict], list[int], int]:
        rows = [(k, v) for k, v in self.table("stack_stats").items() if k.layer == layer]
        rows.sort(key=lambda kv: -kv[1].samples)
        sampled = sum(int(v.samples) for _, v in rows)
        top, depths = [], []
        for key, v in rows[: self.top]:
            frames = self._frames(key.stack_id, key.caller, int(v.tgid))
            depths.append(len(frames))
            top.append({"samples": int(v.samples), "est_calls": int(v.samples) * self.sample,
                        "share": round(int(v.samples) / sampled, 4) if sampled else 0.0,
                        "sampled_bytes": int(v.bytes), "stack": frames})
        return top, depths, sampled

    def _layer(self, fns: dict, slots: tuple[int, ...], free_name: str, layer: int) -> dict:
        secs = max(self.duration_s, 1e-9)
        calls = sum(fns[FN_NAMES[i]]["calls"] for i in slots)
        nbytes = sum(fns[FN_NAMES[i]]["bytes"] for i in slots)
        hist = Histogram.from_table(self.table("size_hist"), slot=layer)
        top, depths, sampled = self._top_stacks(layer)
        realloc_name = FN_NAMES[slots[2]]
        reallocs = fns[realloc_name]["calls"]
        return {
            "calls": calls, "new_blocks": calls - reallocs, "reallocs": reallocs,
            "bytes": nbytes, "frees": fns[free_name]["calls"],
            "frees_null": fns[free_name]["null_or_zero"],
            "rate_per_s": round(calls / secs, 1), "bytes_per_s": round(nbytes / secs, 1),
            "mean_size": round(nbytes / calls, 1) if calls else 0.0,
            "by_function": {FN_NAMES[i]: fns[FN_NAMES[i]] for i in (*slots, FN_NAMES.index(free_name))},
            "size_percentiles": hist.summary(1.0),
            "size_histogram": hist.to_json(scale=1.0, key="le_bytes"),
            "sample_every": self.sample, "stacks_sampled": sampled,
            "top_stacks": top, "_depths": depths,
        }

    def _overhead(self, probed_calls: int) -> dict:
        if not self.calibration:
            return {"measured": False, "reason": "calibration disabled"}
        cost_us = self.calibration["probe_cost_us_per_call"]
        secs = max(self.duration_s, 1e-9)
        spent = probed_calls * cost_us / 1e6
        return {"measured": True, **self.calibration, "probed_calls_in_window": probed_calls,
                "estimated_probe_seconds": round(spent, 4),
                "estimated_target_share": round(spent / secs, 4)}

    def read(self, queries: int | None) -> dict:
        fns = self._fn_stats()
        libc = self._layer(fns, ALLOC_SLOTS, "free", 0)
        depths = libc.pop("_depths")
        out: dict = {"malloc": libc, "attached": list(self.attached), "followed": self.uprobes.summary()}
        probed = libc["calls"] + libc["frees"]
        if self.pymalloc:
            py = self._layer(fns, PY_ALLOC_SLOTS, "PyObject_Free", 1)
            depths += py.pop("_depths")
            py["status"] = self.pymalloc_status
            out["pymalloc"] = py
            probed += py["calls"] + py["frees"]
        else:
            out["pymalloc"] = {"status": self.pymalloc_status}
        out["overhead"] = self._overhead(probed)
        if self.growth is not None:
            assert self.bpf is not None  # read() runs inside collect(), after attach()
            out["outstanding"] = live.read_outstanding(self.bpf, self.growth.samples, self.duration_s, self.sample,
                                                  self.top, self._frames, self.live_max)
        exe = exe_name(self.pid)
        notes = []
        if "python" in exe or self.pymalloc_status.startswith("attached"):
            notes.append(CPYTHON_NOTE)
        note = stack_note(self.pid, depths, exe)
        if note["text"]:
            notes.append(note["text"])
        out["stack_note"] = note
        out["notes"] = notes
        counts = {"alloc_calls": libc["calls"], "new_blocks": libc["new_blocks"], "reallocs": libc["reallocs"],
                  "frees": libc["frees"], "alloc_bytes": libc["bytes"]}
        if self.pymalloc:
            counts["pymalloc_calls"] = out["pymalloc"]["calls"]
        out["per_query"] = per_query(counts, queries)
        return out

    # --- rendering -------------------------------------------------------------
    @classmethod
    def render(cls, result: dict, console) -> None:
        from rich.markup import escape
        from rich.table import Table

        head = heading("memprof", result)
        console.print(head, highlight=False)
        render_processes(result, console, [("alloc calls", "alloc_calls"), ("bytes", "alloc_bytes"),
                                           ("frees", "frees")])
        fol = result.get("followed") or {}
        if fol.get("processes"):
            console.print(f"{fol['processes']} processes joined the tree: counted from {fol['lag_ms_max']:.1f} ms "
                          "(at most) after their fork, when their uprobes were in place", highlight=False)
        layers = [("libc", result["malloc"])]
        if "calls" in result.get("pymalloc", {}):
            layers.append(("CPython PyObject_*", result["pymalloc"]))
        for label, m in layers:
            sp = m["size_percentiles"]
            console.print(f"{label}: {m['calls']} allocation calls ({m['rate_per_s']:.0f}/s; {m['new_blocks']} new "
                          f"blocks, {m['reallocs']} reallocs), {m['bytes']} bytes "
                          f"(mean {m['mean_size']:.0f}), {m['frees']} frees; size p50 {sp['p50']:.0f} "
                          f"p99 {sp['p99']:.0f} max {sp['max']:.0f} bytes", highlight=False)
            fn = Table(title=f"{label} calls by function")
            for col in ("function", "calls", "bytes"):
                fn.add_column(col)
            for name, v in m["by_function"].items():
                if v["calls"]:
                    fn.add_row(name, str(v["calls"]), str(v["bytes"]))
            console.print(fn)
            st = Table(title=f"{label} top allocating stacks (1 in {m['sample_every']} sampled, "
                             f"{m['stacks_sampled']} samples)")
            for col in ("share", "est. calls", "stack (innermost first)"):
                st.add_column(col, overflow="fold")
            for r in m["top_stacks"]:
                st.add_row(f"{r['share'] * 100:.1f}%", str(r["est_calls"]), escape(" < ".join(r["stack"][:4])))
            console.print(st)
        if "outstanding" in result:
            live.render_outstanding(result["outstanding"], console)
        o = result["overhead"]
        if o.get("measured"):
            console.print(f"probe overhead: {o['probe_cost_us_per_call']:.2f} us per probed call "
                          f"({o['ns_per_pair_without']:.0f} -> {o['ns_per_pair_with']:.0f} ns per malloc+free); "
                          f"~{o['estimated_probe_seconds']:.3f} s in this window = "
                          f"{o['estimated_target_share'] * 100:.1f}% of one CPU", highlight=False)
        else:
            console.print(f"probe overhead: not measured ({o.get('reason')})", highlight=False)
        for n in result["notes"]:
            console.print(f"note: {escape(n)}", highlight=False)
        lost = {k: v for k, v in result["lost"].items() if v}
        console.print(f"lost: {lost if lost else 'none'}", highlight=False)
        if result.get("per_query"):
            console.print(f"per query: {result['per_query']}", highlight=False)
