"""Latency recording: a cheap counter on the hot path, an HdrHistogram for the figures.

The generator's inner loop cannot afford HdrHistogram's pure-Python
`record_value` per reply, so it counts quantized latencies in a dict
(`quantize`: 100 ns steps below 10 ms, 0.1 % steps above) and the parent
folds those counts into an HdrHistogram with 3 significant digits (0.1 %
relative accuracy), well inside the 1 % the percentiles need.
"""

from __future__ import annotations

import math
from collections import Counter

from hdrh.histogram import HdrHistogram

LOWEST_NS = 1
HIGHEST_NS = 120 * 1_000_000_000  # two minutes
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


def quantize(ns: int) -> int:
    """Round a latency in ns to the hot-path counter's resolution (error < 0.1 %)."""
    if ns < 10_000_000:
        return ns - ns % 100
    step = 10 ** (len(str(ns)) - 4)
    return ns - ns % step


def to_histogram(counts: dict[int, int]) -> HdrHistogram:
    h = HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
    for ns, n in counts.items():
        h.record_value(min(max(ns, LOWEST_NS), HIGHEST_NS), n)
    return h


def merge_counts(parts: list[dict[int, int]]) -> Counter:
    total: Counter = Counter()
    for p in parts:
        total.update(p)
    return total


def summarize(counts: dict[int, int]) -> dict:
    """latency_us {min, avg, max, p50..p999} (None when nothing was measured)."""
    n = sum(counts.values())
    keys = ("min", "avg", "max", *PERCENTILES)
    if n == 0:
        return {k: None for k in keys}
    h = to_histogram(counts)
    out = {
        "min": min(counts) / 1000,
        "avg": sum(ns * c for ns, c in counts.items()) / n / 1000,
        "max": max(counts) / 1000,
    }
    for name, pct in PERCENTILES.items():
        # HdrHistogram answers with its bucket's upper edge: keep it inside the observed range
        out[name] = min(max(h.get_value_at_percentile(pct) / 1000, out["min"]), out["max"])
    return {k: round(v, 1) for k, v in out.items()}


def buckets(counts: dict[int, int], per_decade: int = 5) -> list[dict]:
    """Log-spaced buckets (upper bound in us, count) for printing and plotting."""
    if not counts:
        return []
    edges_per = 10 ** (1 / per_decade)
    out: dict[int, int] = {}
    for ns, c in counts.items():
        us = max(ns / 1000, 0.1)
        idx = math.ceil(round(math.log10(us) * per_decade, 9))
        out[idx] = out.get(idx, 0) + c
    lo, hi = min(out), max(out)
    return [{"le_us": round(edges_per ** i, 1), "count": out.get(i, 0)} for i in range(lo, hi + 1)]


def histogram_json(counts: dict[int, int]) -> dict:
    """The histogram as JSON: readable buckets plus the lossless HdrHistogram encoding."""
    h = to_histogram(counts) if counts else HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
    return {
        "unit": "us",
        "buckets": buckets(counts),
        "hdr_unit": "ns",
        "hdr_significant_digits": SIGNIFICANT_DIGITS,
        "hdr_base64": h.encode().decode("ascii") if counts else None,
    }


def render_distribution(hist: dict, width: int = 40) -> list[str]:
    """Text lines of the latency distribution with bars, for the console summary."""
    rows = hist.get("buckets") or []
    total = sum(r["count"] for r in rows)
    if not total:
        return ["  (no replies measured)"]
    peak = max(r["count"] for r in rows)
    lines, cum = [], 0
    for r in rows:
        cum += r["count"]
        bar = "#" * max(1 if r["count"] else 0, round(width * r["count"] / peak))
        lines.append(f"  <= {r['le_us']:>10.1f} us {r['count']:>10} {100 * cum / total:6.2f}% {bar}")
    return lines
