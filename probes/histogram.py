"""Log-linear histograms: the Python half of probes/histogram.bpf.h.

BPF adds samples to bucket `hist_index(v)`; Python decodes the array into
bucket bounds, percentiles and JSON. Each power of two is split into
HIST_SUB sub-buckets, so a bucket spans at most 1/16 of its value and a 10 %
shift of p99 moves it by at least one bucket (bare log2 buckets would hide it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

HIST_SUB_BITS = 4
HIST_SUB = 1 << HIST_SUB_BITS
HIST_BUCKETS = (64 - HIST_SUB_BITS + 1) * HIST_SUB

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def hist_index(value: int) -> int:
    """Bucket index of a value, exactly as the BPF helper computes it."""
    if value < HIST_SUB:
        return max(0, int(value))
    exp = value.bit_length() - 1
    sub = (value >> (exp - HIST_SUB_BITS)) & (HIST_SUB - 1)
    return min((exp - HIST_SUB_BITS + 1) * HIST_SUB + sub, HIST_BUCKETS - 1)


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) of a bucket, in the unit the BPF side recorded."""
    if index < HIST_SUB:
        return index, index + 1
    exp = index // HIST_SUB + HIST_SUB_BITS - 1
    sub = index % HIST_SUB
    shift = exp - HIST_SUB_BITS
    return (HIST_SUB + sub) << shift, (HIST_SUB + sub + 1) << shift


@dataclass
class Histogram:
    """Counts per log-linear bucket; values in the unit BPF recorded (ns, bytes)."""

    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table, slot: int = 0) -> "Histogram":
        """Decode one slot of a BPF_ARRAY holding HIST_BUCKETS entries per slot."""
        base = slot * HIST_BUCKETS
        counts: dict[int, int] = {}
        for key, val in table.items():
            idx = key.value - base
            if 0 <= idx < HIST_BUCKETS and val.value:
                counts[idx] = int(val.value)
        return cls(counts)

    @classmethod
    def from_values(cls, values) -> "Histogram":
        """Build from raw values (tests and user-space sources)."""
        hist = cls()
        for v in values:
            hist.add(int(v))
        return hist

    def add(self, value: int, count: int = 1) -> None:
        idx = hist_index(value)
        self.counts[idx] = self.counts.get(idx, 0) + count

    def merge(self, other: "Histogram") -> None:
        for idx, c in other.counts.items():
            self.counts[idx] = self.counts.get(idx, 0) + c

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> float:
        """Value at quantile q, interpolated linearly inside its bucket."""
        total = self.total
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for idx in sorted(self.counts):
            c = self.counts[idx]
            if seen + c >= rank:
                low, high = bucket_bounds(idx)
                frac = (rank - seen) / c if c else 0.0
                return low + (high - low) * min(max(frac, 0.0), 1.0)
            seen += c
        return float(bucket_bounds(max(self.counts))[1])

    def max_bound(self) -> int:
        """Upper bound of the highest non-empty bucket (0 when empty)."""
        return bucket_bounds(max(self.counts))[1] if self.counts else 0

    def summary(self, scale: float = 1.0, exact_max: float | None = None) -> dict:
        """p50/p90/p99/p999/max (and count), each divided by `scale` (1000: ns -> us)."""
        top = exact_max if exact_max is not None else self.max_bound()
        out = {name: round(min(self.percentile(q), top) / scale, 3) for name, q in PERCENTILES}
        out["max"] = round(top / scale, 3)
        out["count"] = self.total
        return out

    def to_json(self, scale: float = 1000.0, key: str = "le_us") -> list[dict]:
        """Non-empty buckets as [{key: upper bound / scale, "count": n}], ascending."""
        return [{key: round(bucket_bounds(i)[1] / scale, 3), "count": self.counts[i]}
                for i in sorted(self.counts)]
