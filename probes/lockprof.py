"""lockprof: futex waits per thread and address, their wakers, and kernel lock contention.

Attaches probes/lockprof.bpf.c (syscalls:sys_enter/exit_futex, futex_waitv and
futex2 futex_wait/wake where present, lock:contention_begin/end) to a process
tree: the pid and its descendants. A futex address is grouped with its
process (workers forked from one supervisor share addresses, not futexes).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from probes.base import Probe, per_query
from probes.doctor import tracepoint_exists
from probes.histogram import Histogram
from probes.proctree import heading, render_processes
from probes.stacks import stack_note, symbolize

OP_NAMES = {0: "WAIT", 1: "WAKE", 3: "REQUEUE", 4: "CMP_REQUEUE", 5: "WAKE_OP", 6: "LOCK_PI",
            7: "UNLOCK_PI", 9: "WAIT_BITSET", 10: "WAKE_BITSET", 11: "WAIT_REQUEUE_PI",
            12: "CMP_REQUEUE_PI", 13: "LOCK_PI2", 64: "WAITV", 65: "FUTEX2_WAIT", 66: "FUTEX2_WAKE"}
OUTCOMES = ("woken", "timedout", "eagain", "eintr", "other")
KLOCK_FLAGS = {1: "SPIN", 2: "READ", 4: "WRITE", 8: "RT", 16: "PERCPU", 32: "MUTEX"}


def us(ns: float) -> float:
    return round(ns / 1000.0, 3)


def thread_comm(pid: int, tid: int) -> str:
    """Name of thread tid of process pid, "?" when it is gone."""
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def klock_flags(flags: int) -> str:
    return "|".join(n for bit, n in KLOCK_FLAGS.items() if flags & bit) or "0"


class LockProf(Probe):
    """Futex wait/wake and kernel lock contention of a process tree."""

    name = "lockprof"
    bpf_file = "lockprof.bpf.c"
    schema = "heimdall.lockprof/1"
    proc_slots = ("futex_waits", "wait_ns", "wake_calls")

    def __init__(self, pid: int, top: int = 10, **opts) -> None:
        super().__init__(pid, **opts)
        self.top = top
        self.has_klocks = tracepoint_exists("lock:contention_begin") and tracepoint_exists("lock:contention_end")
        self._comms: dict[int, str] = {}
        tables = ["start", "comms", "waits", "wakes", "by_op", "by_outcome", "wait_hist", "stacks"]
        if self.has_klocks:
            tables += ["kstart", "klocks", "klock_hist"]
        self.window_tables = tuple(tables)

    def cflags(self) -> list[str]:
        flags = []
        if tracepoint_exists("syscalls:sys_enter_futex_waitv"):
            flags.append("-DHAVE_FUTEX_WAITV")
        if all(tracepoint_exists(f"syscalls:sys_{d}_futex_{w}") for d in ("enter", "exit") for w in ("wait", "wake")):
            flags.append("-DHAVE_FUTEX_WAIT2")
        if self.has_klocks:
            flags.append("-DHAVE_LOCK_CONTENTION")
        return flags

    # --- reading ---------------------------------------------------------------
    def _load_comms(self) -> None:
        for k, v in self.table("comms").items():
            self._comms[k.value] = v.comm.decode(errors="replace")

    def tcomm(self, tid: int, pid: int) -> str:
        """Thread name: live from /proc, else as seen in BPF when it waited/woke."""
        name = thread_comm(pid, tid)
        return self._comms.get(tid, name) if name == "?" else name

    def processes(self) -> dict[int, dict]:
        procs = super().processes()
        for row in procs.values():
            row["wait_us_total"] = us(row.pop("wait_ns"))
        return procs

    def _wait_rows(self) -> list[dict]:
        rows = []
        for k, v in self.table("waits").items():
            rows.append({"pid": k.tgid, "tid": k.tid, "uaddr": k.uaddr, "stack_id": k.stack_id, "op": OP_NAMES.get(k.op, f"op{k.op}"),
                         "waits": v.count,
                         "total_ns": v.total_ns, "max_ns": v.max_ns,
                         "outcomes": {OUTCOMES[i]: int(v.outcomes[i]) for i in range(len(OUTCOMES))}})
        return rows

    def _wakers(self) -> dict[tuple[int, int], list[dict]]:
        """(pid, uaddr) -> the threads that woke waiters on it, most wakes first."""
        by_addr: dict[tuple[int, int], list[dict]] = defaultdict(list)
        for k, v in self.table("wakes").items():
            by_addr[(k.tgid, k.uaddr)].append({"tid": k.tid, "comm": self.tcomm(k.tid, k.tgid),
                                               "calls": int(v.calls), "woken": int(v.woken)})
        for lst in by_addr.values():
            lst.sort(key=lambda w: -w["woken"])
        return by_addr

    def _stats(self, table: str, names) -> dict:
        out = {}
        t = self.table(table)
        for key, val in t.items():
            if val.count:
                name = names(key.value)
                out[name] = {"calls": int(val.count), "wait_us_total": us(val.total_ns),
                             "wait_us_max": us(val.max_ns)}
        return out

    def _top(self, rows: list[dict], wakers: dict[tuple[int, int], list[dict]]) -> tuple[list[dict], list[int]]:
        rows = sorted(rows, key=lambda r: -r["total_ns"])[: self.top]
        top, depths = [], []
        for r in rows:
            frames = symbolize(self.bpf, r["stack_id"], r["pid"])
            if r["stack_id"] >= 0:
                depths.append(len(frames))
            top.append({"pid": r["pid"], "tid": r["tid"], "comm": self.tcomm(r["tid"], r["pid"]),
                        "uaddr": hex(r["uaddr"]), "op": r["op"],
                        "waits": r["waits"], "wait_us_total": us(r["total_ns"]),
                        "wait_us_mean": us(r["total_ns"] / r["waits"]) if r["waits"] else 0.0,
                        "wait_us_max": us(r["max_ns"]), "outcomes": r["outcomes"], "stack": frames,
                        "wakers": wakers.get((r["pid"], r["uaddr"]), [])[:5]})
        return top, depths

    @staticmethod
    def _group(rows: list[dict], field: str) -> list[dict]:
        """Rows summed per thread (field "tid") or per futex (field "uaddr", within its process)."""
        acc: dict[tuple[int, int], dict] = {}
        for r in rows:
            a = acc.setdefault((r["pid"], r[field]), {"pid": r["pid"], field: r[field], "waits": 0, "total_ns": 0,
                                                      "max_ns": 0, "tids": set(), "ops": set()})
            a["ops"].add(r["op"])
            a["waits"] += r["waits"]
            a["total_ns"] += r["total_ns"]
            a["max_ns"] = max(a["max_ns"], r["max_ns"])
            a["tids"].add(r["tid"])
        out = []
        for a in sorted(acc.values(), key=lambda a: -a["total_ns"]):
            item = {"pid": a["pid"], field: hex(a[field]) if field == "uaddr" else a[field], "waits": a["waits"],
                    "wait_us_total": us(a["total_ns"]), "wait_us_max": us(a["max_ns"])}
            if field == "uaddr":
                item["threads"] = len(a["tids"])
                item["tids"] = sorted(a["tids"])
                item["ops"] = sorted(a["ops"])
            out.append(item)
        return out

    def _kernel_locks(self) -> dict:
        if not self.has_klocks:
            return {"available": False, "reason": "lock:contention_begin/end tracepoints absent"}
        bpf = self.bpf
        assert bpf is not None  # called from read(), inside collect(), after attach()
        rows = []
        for k, v in self.table("klocks").items():
            rows.append((k, v))
        rows.sort(key=lambda kv: -kv[1].total_ns)
        top = []
        for k, v in rows[: self.top]:
            sym = bpf.ksym(k.lock, show_offset=True)
            sym = sym.decode(errors="replace") if isinstance(sym, bytes) else str(sym)
            top.append({"lock": hex(k.lock), "symbol": None if sym.startswith("[unknown]") else sym,
                        "flags": klock_flags(k.flags), "contentions": int(v.count),
                        "wait_us_total": us(v.total_ns), "wait_us_max": us(v.max_ns),
                        "stack": symbolize(bpf, k.kstack, self.pid, kernel=True, limit=8)})
        hist = Histogram.from_table(self.table("klock_hist"))
        return {"available": True, "contentions": sum(int(v.count) for _, v in rows),
                "wait_us_total": us(sum(v.total_ns for _, v in rows)),
                "wait_us_max": us(max((v.max_ns for _, v in rows), default=0)),
                "percentiles_us": hist.summary(1000.0), "histogram_us": hist.to_json(), "top": top}

    def read(self, queries: int | None) -> dict:
        self._load_comms()
        rows = self._wait_rows()
        wakers = self._wakers()
        hist = Histogram.from_table(self.table("wait_hist"))
        waits = sum(r["waits"] for r in rows)
        total_ns = sum(r["total_ns"] for r in rows)
        max_ns = max((r["max_ns"] for r in rows), default=0)
        top, depths = self._top(rows, wakers)
        by_op = self._stats("by_op", lambda i: OP_NAMES.get(i, f"op{i}"))
        by_outcome = self._stats("by_outcome", lambda i: OUTCOMES[i])
        wake_calls = sum(w["calls"] for lst in wakers.values() for w in lst)
        woken = sum(w["woken"] for lst in wakers.values() for w in lst)
        futex = {
            "waits": waits, "wait_us_total": us(total_ns), "wait_us_max": us(max_ns),
            "wait_us_mean": us(total_ns / waits) if waits else 0.0,
            "wake_calls": wake_calls, "woken": woken,
            "by_op": by_op,
            "by_outcome": {name: by_outcome.get(name, {"calls": 0, "wait_us_total": 0.0, "wait_us_max": 0.0})
                           for name in OUTCOMES},
            "percentiles_us": hist.summary(1000.0, exact_max=max_ns),
            "histogram_us": hist.to_json(),
            "by_thread": self._group(rows, "tid"),
            "by_uaddr": self._group(rows, "uaddr")[: self.top],
            "top": top,
            "stack_note": stack_note(self.pid, depths),
        }
        for t in futex["by_thread"]:
            t["comm"] = self.tcomm(t["tid"], t["pid"])
        out: dict[str, Any] = {"futex": futex, "kernel_locks": self._kernel_locks()}
        out["per_query"] = per_query({"futex_waits": waits, "futex_wait_us": total_ns / 1000.0,
                                      "futex_wake_calls": wake_calls}, queries)
        return out

    # --- rendering -------------------------------------------------------------
    @classmethod
    def render(cls, result: dict, console) -> None:
        from rich.markup import escape
        from rich.table import Table

        f = result["futex"]
        head = heading("lockprof", result)
        console.print(head, highlight=False)
        console.print(f"futex waits {f['waits']}  total {f['wait_us_total']:.0f} us  mean {f['wait_us_mean']:.1f} us  "
                      f"max {f['wait_us_max']:.0f} us  p50 {f['percentiles_us']['p50']:.1f}  "
                      f"p99 {f['percentiles_us']['p99']:.1f} us  wakes {f['wake_calls']} (woke {f['woken']})",
                      highlight=False)
        ops = ", ".join(f"{k} {v['calls']}" for k, v in f["by_op"].items())
        outs = ", ".join(f"{k} {v['calls']}" for k, v in f["by_outcome"].items() if v["calls"])
        console.print(f"by op: {ops or '-'}   by outcome: {outs or '-'}", highlight=False)
        render_processes(result, console, [("futex waits", "futex_waits"), ("wait us", "wait_us_total"),
                                           ("wake calls", "wake_calls")])
        table = Table(title="top futex waits (tid, address, op, stack)")
        for col in ("pid/tid", "comm", "uaddr", "op", "waits", "total ms", "mean us", "max us",
                    "woken/tmo/eagain", "top waker:woken", "innermost frame"):
            table.add_column(col, overflow="fold")
        for r in f["top"]:
            o = r["outcomes"]
            wk = f"{r['wakers'][0]['tid']}:{r['wakers'][0]['woken']}" if r["wakers"] else "-"
            table.add_row(f"{r.get('pid', '?')}/{r['tid']}", r["comm"], r["uaddr"], r["op"], str(r["waits"]),
                          f"{r['wait_us_total'] / 1000:.1f}", f"{r['wait_us_mean']:.1f}", f"{r['wait_us_max']:.0f}",
                          f"{o['woken']}/{o['timedout']}/{o['eagain']}", wk, escape(r["stack"][0]) if r["stack"] else "-")
        console.print(table)
        if f["stack_note"]["text"]:
            console.print(f"note: {escape(f['stack_note']['text'])}", highlight=False)
        k = result["kernel_locks"]
        if not k.get("available"):
            console.print(f"kernel locks: unavailable ({k.get('reason')})", highlight=False)
        else:
            kt = Table(title=f"kernel lock contention: {k['contentions']} waits, {k['wait_us_total']:.0f} us")
            for col in ("lock", "flags", "count", "total us", "max us", "caller"):
                kt.add_column(col, overflow="fold")
            for r in k["top"]:
                caller = next((fr for fr in r["stack"] if "spin_lock" not in fr and "lock_slowpath" not in fr
                               and "mutex_lock" not in fr), r["stack"][0] if r["stack"] else "-")
                kt.add_row(r["symbol"] or r["lock"], r["flags"], str(r["contentions"]), f"{r['wait_us_total']:.0f}",
                           f"{r['wait_us_max']:.0f}", escape(caller))
            console.print(kt)
        lost = {k: v for k, v in result["lost"].items() if v}
        console.print(f"lost: {lost if lost else 'none'}", highlight=False)
        if result.get("per_query"):
            console.print(f"per query: {result['per_query']}", highlight=False)
