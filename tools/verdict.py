"""Statistics and verdicts for `check`: is a change real, big enough, or noise?

A metric regresses only when BOTH hold (as asv pairs a test with a factor):
  * its median is worse than the baseline's by more than the threshold
    (the user's --max-regression for times and CPU cost; a tight threshold for
    nearly deterministic per-query counts such as mallocs/query), and
  * the repeats say the difference is real: a one-sided Mann-Whitney U test of
    the current repeats against the baseline's, exact over all rank splits.
Worse by more than the threshold but not significant: "inconclusive" (too
noisy to tell). Wall-clock metrics measured while other processes used more
than half a core, or much more than at baseline time, are "inconclusive" too,
never a regression: the cost and count metrics (CPU time and events per
query) still gate then. On a busy machine a CPU-per-query regression must also
exceed 1.5x the threshold (kernel wake-up paths cost more under contention);
between one and 1.5 thresholds it is inconclusive. Instructions per query
(counted under callgrind, kind "work") take the --max-regression threshold and
no allowance for a busy machine: it cannot move them. A cost or count whose
baseline repeats themselves spread wider than twice its threshold (a server that batches syscalls makes
syscalls/query depend on queue depth) is judged like a wall-clock figure.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Iterable, Sequence

from tools.errors import EXIT_INCONCLUSIVE, EXIT_OK, EXIT_REGRESSION

ALPHA = 0.05
DEFAULT_COUNT_THRESHOLD_PCT = 3.0   # per-query counts are nearly deterministic
RATE_ABS_FLOOR = 0.01               # error rates: one percentage point
BUSY_MARGIN_CORES = 0.35           # foreign CPU above baseline's that voids wall-clock verdicts
QUIET_LIMIT_CORES = 0.5            # foreign CPU during the check above which wall-clock verdicts are void
BUSY_COST_FACTOR = 1.5             # on a busy machine CPU per query must worsen by this x the threshold
EXACT_LIMIT = 200_000               # rank splits enumerated exactly; beyond, normal approximation

OK, IMPROVED, REGRESSION, INCONCLUSIVE = "ok", "improved", "regression", "inconclusive"
WORSE = "worse"   # what a regression is called on a row shown for information: it does not gate
LOAD_DEPENDENT_SUFFIX = " (varies with load)"


def ranks(values: Sequence[float]) -> list[float]:
    """Mid-ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value that x tends to be larger than y (H1: P(X > Y) > 1/2).

    Exact conditional test over every split of the pooled mid-ranks when that
    is small (5 vs 5 repeats: 252 splits), so ties are handled exactly; normal
    approximation with tie correction beyond EXACT_LIMIT splits.
    """
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return 1.0
    pooled = list(x) + list(y)
    r = ranks(pooled)
    observed = sum(r[:n])
    total = math.comb(n + m, n)
    if total <= EXACT_LIMIT:
        eps = 1e-9
        hits = sum(1 for idx in itertools.combinations(range(n + m), n)
                   if sum(r[i] for i in idx) >= observed - eps)
        return hits / total
    return normal_p_greater(x, y)


def signed_rank_greater(d: Sequence[float]) -> float:
    """One-sided p-value that paired differences d tend to be positive (Wilcoxon signed-rank).

    Exact over every assignment of signs to the mid-ranks of |d| when that is
    small (5 pairs: 32 assignments, so p reaches 1/32), normal approximation
    beyond; zero differences are dropped, as Wilcoxon did.
    """
    nonzero = [v for v in d if v != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    r = ranks([abs(v) for v in nonzero])
    observed = sum(rk for rk, v in zip(r, nonzero) if v > 0)
    if 2 ** n <= EXACT_LIMIT:
        eps = 1e-9
        hits = sum(1 for signs in itertools.product((0, 1), repeat=n)
                   if sum(rk for rk, s in zip(r, signs) if s) >= observed - eps)
        return hits / 2 ** n
    mean = n * (n + 1) / 4
    var = sum(rk * rk for rk in r) / 4
    z = (observed - mean - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_p_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """Normal approximation of `mann_whitney_greater`, with tie and continuity corrections."""
    n, m = len(x), len(y)
    pooled = list(x) + list(y)
    u = sum(ranks(pooled)[:n]) - n * (n + 1) / 2
    mean_u = n * m / 2
    ties = _tie_term(pooled)
    var_u = n * m / 12 * ((n + m + 1) - ties / ((n + m) * (n + m - 1)))
    if var_u <= 0:
        return 1.0 if u <= mean_u else 0.0
    z = (u - mean_u - 0.5) / math.sqrt(var_u)
    return 0.5 * math.erfc(z / math.sqrt(2))


def _tie_term(values: Iterable[float]) -> float:
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sum(t ** 3 - t for t in counts.values())


def min_attainable_p(n: int, m: int) -> float:
    """Smallest one-sided p any result can reach with n and m repeats."""
    return 1 / math.comb(n + m, n) if n and m else 1.0


@dataclass
class MetricVerdict:
    """One row of the check table."""

    scenario: str
    metric: str
    unit: str
    better: str
    kind: str
    baseline: float
    current: float
    change_pct: float | None      # signed change of the median, None when the baseline is 0
    threshold_pct: float
    p_value: float
    verdict: str
    reason: str = ""
    gate: bool = True             # False: shown, but does not set the exit status
    basis: str = "absolute"       # "paired": judged on ratios to a reference measured beside it;
                                  # "counted": instructions counted under callgrind

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Thresholds:
    """How much worse a median may get, per kind of metric."""

    max_regression_pct: float
    count_pct: float = DEFAULT_COUNT_THRESHOLD_PCT
    alpha: float = ALPHA
    busy_margin_cores: float = BUSY_MARGIN_CORES
    quiet_limit_cores: float = QUIET_LIMIT_CORES

    def machine_busy(self, base_foreign: float, cur_foreign: float) -> str | None:
        """Why wall-clock figures of this run cannot be compared with the baseline's, or None."""
        if cur_foreign > self.quiet_limit_cores:
            return (f"other processes used {cur_foreign:.2f} cores during this run (more than "
                    f"{self.quiet_limit_cores:g}): figures that move with machine load are not comparable")
        if cur_foreign - base_foreign > self.busy_margin_cores:
            return (f"other processes used {cur_foreign - base_foreign:.2f} more cores than at baseline "
                    "time: figures that move with machine load are not comparable")
        return None

    def for_kind(self, kind: str) -> float:
        return self.count_pct if kind == "count" else self.max_regression_pct


@dataclass
class Series:
    """Every repeat's value of one metric, with what it means."""

    values: list[float]
    unit: str
    better: str        # "higher" | "lower"
    kind: str          # "time" | "cost" | "count" | "rate"
    abs_floor: float = 0.0
    median: float = field(init=False)

    def __post_init__(self) -> None:
        self.median = statistics.median(self.values) if self.values else math.nan

    @classmethod
    def from_json(cls, d: dict) -> "Series":
        return cls(values=[float(v) for v in d["values"]], unit=str(d["unit"]), better=str(d["better"]),
                   kind=str(d.get("kind", "time")), abs_floor=float(d.get("abs_floor", 0.0)))


def judge(scenario: str, metric: str, base: Series, cur: Series, th: Thresholds,
          machine_busy: str | None = None, gate: bool = True, paired: bool = False) -> MetricVerdict:
    """The verdict for one metric of one scenario. `paired`: value i of base and of cur were
    measured side by side, so the change is the median of their ratios and the test is
    Wilcoxon's signed-rank over the pairs, not Mann-Whitney over two samples."""
    sign = 1.0 if base.better == "lower" else -1.0           # +: worse
    diff = cur.median - base.median
    worse_abs = sign * diff
    change_pct = None if base.median == 0 else 100.0 * diff / abs(base.median)
    if paired:
        return _judge_pairs(scenario, metric, base, cur, th, gate, sign, worse_abs)
    if change_pct is None:   # baseline median 0: any worsening is infinitely worse
        worse_pct = math.inf if worse_abs > 0 else 0.0
    else:
        worse_pct = sign * change_pct
    kind = effective_kind(base, th)
    worse_x, better_x = (cur.values, base.values) if sign > 0 else (base.values, cur.values)
    p_worse = mann_whitney_greater(worse_x, better_x)
    p_better = mann_whitney_greater(better_x, worse_x)
    row = partial(MetricVerdict, scenario=scenario, metric=metric, unit=base.unit, better=base.better, kind=kind,
                  baseline=base.median, current=cur.median, change_pct=change_pct,
                  threshold_pct=th.for_kind(kind), gate=gate)
    return _decide(row, base, kind, th, machine_busy, gate, worse_pct, worse_abs, p_worse, p_better,
                   min_attainable_p(len(base.values), len(cur.values)))


def _judge_pairs(scenario: str, metric: str, base: Series, cur: Series, th: Thresholds, gate: bool,
                 sign: float, worse_abs: float) -> MetricVerdict:
    ratios = [c / b for b, c in zip(base.values, cur.values) if b > 0 and c > 0]
    change_pct = 100.0 * (statistics.median(ratios) - 1.0) if ratios else None
    worse_pct = 0.0 if change_pct is None else sign * change_pct
    logs = [sign * math.log(r) for r in ratios]
    kind = effective_kind(base, th)
    row = partial(MetricVerdict, scenario=scenario, metric=metric, unit=base.unit, better=base.better, kind=kind,
                  baseline=base.median, current=cur.median, change_pct=change_pct,
                  threshold_pct=th.for_kind(kind), gate=gate, basis="paired")
    return _decide(row, base, kind, th, None, gate, worse_pct, worse_abs,
                   signed_rank_greater(logs), signed_rank_greater([-v for v in logs]), 0.5 ** max(len(logs), 0))


def _decide(row: partial, base: Series, kind: str, th: Thresholds, machine_busy: str | None, gate: bool,
            worse_pct: float, worse_abs: float, p_worse: float, p_better: float, min_p: float) -> MetricVerdict:
    """Regression, inconclusive, improved or ok from the change, its floor and its p-values
    (min_p: the smallest p-value the test could reach with these repeats)."""
    threshold = th.for_kind(kind)
    floor = RATE_ABS_FLOOR if base.kind == "rate" else base.abs_floor
    beyond = worse_pct > threshold and worse_abs > floor
    if base.kind == "rate":
        beyond = worse_abs > max(floor, threshold / 100.0 * abs(base.median))
    if beyond:
        if (kind == "time" or kind.endswith(LOAD_DEPENDENT_SUFFIX)) and machine_busy:
            why = f"worse by {_fmt_pct(worse_pct)}, but {machine_busy}"
            return row(p_value=p_worse, verdict=INCONCLUSIVE, reason=why)
        if kind == "cost" and machine_busy and worse_pct <= BUSY_COST_FACTOR * threshold:
            why = (f"worse by {_fmt_pct(worse_pct)}, within {BUSY_COST_FACTOR:g}x the threshold that a busy machine "
                   f"needs for CPU per query ({machine_busy})")
            return row(p_value=p_worse, verdict=INCONCLUSIVE, reason=why)
        if p_worse >= th.alpha:
            why = (f"worse by {_fmt_pct(worse_pct)} but not significant (p={p_worse:.3f}"
                   + (f"; {len(base.values)} repeats cannot reach p<{th.alpha:g}" if min_p >= th.alpha else "")
                   + ")")
            return row(p_value=p_worse, verdict=INCONCLUSIVE, reason=why)
        bar = BUSY_COST_FACTOR * threshold if kind == "cost" and machine_busy else threshold
        return row(p_value=p_worse, verdict=REGRESSION if gate else WORSE,
                   reason=f"worse by {_fmt_pct(worse_pct)} > {bar:g}% (p={p_worse:.3f})"
                   + (" although the machine was busy" if bar != threshold else "")
                   + ("" if gate else "; shown for information, does not gate"))
    if -worse_pct > threshold and -worse_abs > floor and p_better < th.alpha:
        return row(p_value=p_better, verdict=IMPROVED,
                   reason=f"better by {_fmt_pct(-worse_pct)} (p={p_better:.3f})")
    return row(p_value=p_worse, verdict=OK, reason="within threshold")


def relative_spread(values: Sequence[float]) -> float:
    """Range over |median|, without the lowest and highest value once there are 4 or more
    (one disturbed window must not make a stable metric look load-dependent); 0 when constant."""
    if len(values) < 2:
        return 0.0
    ordered = sorted(values)
    if len(ordered) >= 4:
        ordered = ordered[1:-1]
    med = statistics.median(values)
    return (ordered[-1] - ordered[0]) / abs(med) if med else 0.0


def effective_kind(base: Series, th: Thresholds) -> str:
    """A cost or count whose own baseline repeats spread wider than its threshold depends on load
    (batched syscalls, upstream retries under contention): it is judged like a wall-clock figure."""
    if base.kind in ("count", "cost") and relative_spread(base.values) * 100 > 2 * th.for_kind(base.kind):
        return f"{base.kind}{LOAD_DEPENDENT_SUFFIX}"
    return base.kind


def _fmt_pct(v: float) -> str:
    return "inf%" if math.isinf(v) else f"{v:.1f}%"


def overall(rows: Sequence[MetricVerdict]) -> tuple[int, str]:
    """Exit status and one-line reason for a whole check (gating rows only)."""
    regressions = [r for r in rows if r.verdict == REGRESSION]
    if regressions:
        names = ", ".join(f"{r.scenario}/{r.metric}" for r in regressions[:4])
        more = f" and {len(regressions) - 4} more" if len(regressions) > 4 else ""
        return EXIT_REGRESSION, f"regression in {names}{more}"
    unsure = [r for r in rows if r.verdict == INCONCLUSIVE and r.gate]
    if unsure:
        names = ", ".join(f"{r.scenario}/{r.metric}" for r in unsure[:4])
        busy = sum(1 for r in unsure if "machine" in r.reason)
        why = ("the machine was busy" if busy == len(unsure) else
               "too noisy to tell" if busy == 0 else "a busy machine and noise")
        more = f" and {len(unsure) - 4} more" if len(unsure) > 4 else ""
        return EXIT_INCONCLUSIVE, f"inconclusive ({why}) for {names}{more}"
    gating = sum(1 for r in rows if r.gate)
    return EXIT_OK, f"pass: {gating} gating metrics within thresholds ({len(rows) - gating} more shown for information)"
