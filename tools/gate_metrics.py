"""The gate's metric specs: what `check` compares per scenario and how to read it.

Each metric says its unit, which direction is better, and its kind, which
decides its threshold and how a verdict treats it:
  time  - wall-clock figures (q/s, latencies): move with machine load
  cost  - server CPU time per answered query: stable under foreign load
  count - events per answered query (mallocs, futex waits, syscalls):
          nearly deterministic, so they get a tight threshold
  rate  - error share: compared in absolute percentage points
  work  - instructions per query, counted under callgrind (tools/instructions.py):
          deterministic, so judged against --max-regression like CPU time but
          never voided by a busy machine
Latencies (in a closed loop Little's law ties them to q/s: clients = q/s x
average latency, so gating both counts one effect twice), futex wait time and
queue p99 are judged and shown but do not gate: with
a dozen metrics per scenario, every extra noisy metric that can fail the
check is another chance of a false alarm, and tails are the noisiest.
Window records come from `measure.measure_window`; probe figures are read from
its normalised `probes_summary`, so probe field names live in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeGuard


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    unit: str
    better: str          # "higher" | "lower"
    kind: str            # "time" | "cost" | "count" | "rate" | "work"
    abs_floor: float = 0.0   # differences smaller than this never count (near-zero counts)
    probe: str | None = None  # probe that must have run for this metric
    gate: bool = True         # False: judged and shown, but does not set check's exit status


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("qps", "throughput", "q/s", "higher", "time"),
    MetricSpec("latency_avg_us", "latency avg", "us", "lower", "time", gate=False),
    MetricSpec("latency_p50_us", "latency p50", "us", "lower", "time", gate=False),
    MetricSpec("latency_p99_us", "latency p99", "us", "lower", "time", gate=False),
    MetricSpec("error_rate", "error rate", "ratio", "lower", "rate"),
    MetricSpec("cpu_us_per_query", "server CPU per query", "us", "lower", "cost", abs_floor=0.5),
    MetricSpec("instructions_per_query", "instructions per query", "instr/q", "lower", "work"),
    MetricSpec("futex_waits_per_query", "futex waits per query", "1/q", "lower", "count",
               abs_floor=0.05, probe="lockprof"),
    MetricSpec("futex_wait_us_per_query", "futex wait per query", "us", "lower", "time",
               abs_floor=1.0, probe="lockprof", gate=False),
    MetricSpec("mallocs_per_query", "mallocs per query", "1/q", "lower", "count",
               abs_floor=0.5, probe="memprof"),
    # Heimdall's libc mallocs are ~2-4 KB receive buffers, a fraction of one per query that moves
    # with batching; the byte floor matches the call floor above (half a 4 KB buffer per query).
    MetricSpec("malloc_bytes_per_query", "malloc bytes per query", "B/q", "lower", "count",
               abs_floor=2048.0, probe="memprof"),
    # Reads and writes are batched (recvmmsg/sendmmsg): how many datagrams wait per read moves
    # with how the scheduler splits the CPUs between server and load, and moved syscalls per
    # query by up to 0.18 between checks of unchanged code (cache hits 0.69 -> 0.81, the mix
    # 0.95 -> 1.13). The floor sits above that and below what a code change costs: one more
    # syscall per query, or a reply sent alone instead of in a batch.
    MetricSpec("syscalls_per_query", "socket syscalls per query", "1/q", "lower", "count",
               abs_floor=0.3, probe="netprof"),
    MetricSpec("udp_queue_p99_us", "receive-queue wait p99", "us", "lower", "time",
               abs_floor=5.0, probe="netprof", gate=False),
)

BY_KEY = {m.key: m for m in CATALOGUE}


def window_metrics(window: dict) -> dict[str, float]:
    """The catalogue's values for one measured window (only those it has)."""
    load = window.get("load", {})
    lat = load.get("latency_us") or {}
    out: dict[str, float | None] = {
        "qps": load.get("qps"),
        "latency_avg_us": lat.get("avg"),
        "latency_p50_us": lat.get("p50"),
        "latency_p99_us": lat.get("p99"),
        "error_rate": error_rate(load),
        "cpu_us_per_query": (window.get("server_cpu") or {}).get("cpu_us_per_query"),
    }
    out.update((window.get("probes_summary") or {}).get("per_query_metrics", {}))
    return {k: float(v) for k, v in out.items() if k in BY_KEY and _finite(v)}


def error_rate(load: dict) -> float | None:
    """Share of sent queries that got no usable answer (timeouts and errors)."""
    sent = load.get("sent") or 0
    if not sent:
        return None
    failed = (load.get("timeouts") or 0) + (load.get("errors") or 0)
    return failed / sent


def _finite(v: object) -> TypeGuard[float]:
    """A finite int or float (bool excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
