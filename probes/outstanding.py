"""memprof --outstanding: libc blocks allocated in the window and not freed by its end.

The BPF half is probes/outstanding.bpf.h (compiled into memprof.bpf.c with
-DOUTSTANDING): return probes file each new block in a map keyed by (tgid,
address), free and realloc take blocks out, and two counters hold the
outstanding bytes and blocks at every instant. Here a thread reads those
counters once a second during the window (`GrowthSampler`), and at the end
`read_outstanding` walks the map: totals, per process, sizes, the top
allocating stacks by outstanding bytes (from the 1-in-N sampled stacks,
scaled by N) and the growth rate (least-squares slope of the samples).
Blocks from before the window are never in the map, so freeing them cannot
count as negative, nor can they count as leaks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from probes.histogram import Histogram

RETURN_FNS = ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc")
RETURN_HANDLER = "alloc_return"
LIVE_MAX = 131072          # blocks tracked at once by default (map size)
TOTALS = ("bytes", "blocks", "untracked", "untracked_bytes", "freed_tracked", "freed_unknown")
SAMPLE_EVERY_S = 1.0


def read_totals(bpf) -> dict[str, int]:
    """The live_totals counters now."""
    table = bpf[b"live_totals"]
    return {name: int(table[table.Key(i)].value) for i, name in enumerate(TOTALS)}


@dataclass
class GrowthSampler:
    """Outstanding bytes and blocks once a second while the window is open (a daemon thread)."""

    read: Callable[[], dict[str, int]]
    interval: float = SAMPLE_EVERY_S
    samples: list[dict] = field(default_factory=list)
    _t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.samples = [{"t_s": 0.0, "bytes": 0, "blocks": 0}]
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outstanding-growth", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            t = self.read()
        except Exception:  # the probe closed under us: the samples so far stand
            return
        self.samples.append({"t_s": round(time.monotonic() - self._t0, 3), "bytes": t["bytes"],
                             "blocks": t["blocks"]})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        """Stop the thread and take the closing sample (call before the window closes)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        self._sample()


def slope(samples: list[dict], key: str) -> float:
    """Least-squares slope of samples[key] over t_s, per second (0 with fewer than two samples)."""
    pts = [(s["t_s"], s[key]) for s in samples]
    if len(pts) < 2:
        return 0.0
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (v - mv) for t, v in pts) / var if var > 0 else 0.0


def _top_stacks(blocks: list[tuple[int, Any]], sample: int, top: int,
                frames: Callable[[int, int, int], list[str]]) -> list[dict]:
    """Outstanding bytes per sampled allocating stack, estimated for all blocks (x sample)."""
    groups: dict[tuple[int, int], dict] = {}
    for tgid, v in blocks:
        if not v.sampled:
            continue
        g = groups.setdefault((int(v.stack_id), int(v.caller)), {"tgid": tgid, "blocks": 0, "bytes": 0})
        g["blocks"] += 1
        g["bytes"] += int(v.size)
    sampled_bytes = sum(g["bytes"] for g in groups.values())
    rows = sorted(groups.items(), key=lambda kv: -kv[1]["bytes"])[:top]
    return [{"sampled_blocks": g["blocks"], "sampled_bytes": g["bytes"],
             "est_bytes": g["bytes"] * sample, "est_blocks": g["blocks"] * sample,
             "share": round(g["bytes"] / sampled_bytes, 4) if sampled_bytes else 0.0,
             "stack": frames(stack_id, caller, g["tgid"])}
            for (stack_id, caller), g in rows]


def read_outstanding(bpf, samples: list[dict], window_s: float, sample: int, top: int,
                     frames: Callable[[int, int, int], list[str]], live_max: int = LIVE_MAX) -> dict:
    """The `outstanding` part of memprof's JSON."""
    totals = read_totals(bpf)
    blocks = [(int(k.tgid), v) for k, v in bpf[b"live"].items()]
    now_ns = time.monotonic_ns()   # CLOCK_MONOTONIC, as bpf_ktime_get_ns
    hist = Histogram.from_values(int(v.size) for _, v in blocks)
    per_pid: dict[int, dict] = {}
    for tgid, v in blocks:
        row = per_pid.setdefault(tgid, {"bytes": 0, "blocks": 0})
        row["bytes"] += int(v.size)
        row["blocks"] += 1
    ages = sorted((now_ns - int(v.ts_ns)) / 1e9 for _, v in blocks)
    secs = max(window_s, 1e-9)
    return {
        "bytes": sum(int(v.size) for _, v in blocks),
        "blocks": len(blocks),
        "counter_bytes": totals["bytes"], "counter_blocks": totals["blocks"],
        "by_pid": {str(p): per_pid[p] for p in sorted(per_pid)},
        "size_percentiles": hist.summary(1.0),
        "size_histogram": hist.to_json(scale=1.0, key="le_bytes"),
        "age_s_median": round(ages[len(ages) // 2], 3) if ages else None,
        "top_stacks": _top_stacks(blocks, sample, top, frames),
        "sample_every": sample,
        "growth": {"samples": samples,
                   "bytes_per_s": round(slope(samples, "bytes"), 1),
                   "blocks_per_s": round(slope(samples, "blocks"), 2),
                   "mean_bytes_per_s": round(totals["bytes"] / secs, 1)},
        "frees_of_window_blocks": totals["freed_tracked"],
        "frees_of_older_blocks": totals["freed_unknown"],
        "untracked": {"allocations": totals["untracked"], "bytes": totals["untracked_bytes"],
                      "map_size": live_max},
        "scope": "libc malloc/calloc/realloc/posix_memalign/aligned_alloc blocks allocated in the window",
    }


def render_outstanding(o: dict, console) -> None:
    """The outstanding section of memprof's text report."""
    from rich.markup import escape
    from rich.table import Table

    sp, g = o["size_percentiles"], o["growth"]
    console.print(f"outstanding at window end: {o['bytes']} bytes in {o['blocks']} blocks (size p50 "
                  f"{sp['p50']:.0f} max {sp['max']:.0f}); growth {g['bytes_per_s']:.0f} bytes/s "
                  f"({g['blocks_per_s']:.1f} blocks/s) over {len(g['samples'])} samples; "
                  f"{o['frees_of_older_blocks']} frees of blocks from before the window", highlight=False)
    if o["untracked"]["allocations"]:
        console.print(f"[yellow]{o['untracked']['allocations']} allocations "
                      f"({o['untracked']['bytes']} bytes) did not fit the {o['untracked']['map_size']}-block "
                      "map: outstanding figures are a lower bound[/]", highlight=False)
    st = Table(title=f"stacks holding outstanding bytes (1 in {o['sample_every']} sampled, scaled)")
    for col in ("share", "est. bytes", "est. blocks", "stack (innermost first)"):
        st.add_column(col, overflow="fold")
    for r in o["top_stacks"]:
        st.add_row(f"{r['share'] * 100:.1f}%", str(r["est_bytes"]), str(r["est_blocks"]),
                   escape(" < ".join(r["stack"][:4])))
    console.print(st)
