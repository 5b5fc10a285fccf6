"""Statistics of a side-by-side run: medians with min-max spread, and ratios to Heimdall."""

from __future__ import annotations

import statistics

from tools.sidebyside.contestants import Contestant
from tools.sidebyside.options import METRICS


def spread(values: list[float | None]) -> dict | None:
    """{median, min, max, n, values} of the non-missing values (None when there are none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3),
            "max": round(max(vals), 3), "n": len(vals), "values": [round(v, 3) for v in vals]}


def reference_name(c: Contestant) -> str:
    """The Heimdall row a row is compared to: the one over the same transport."""
    return "heimdall" if c.transport == "udp" else f"heimdall/{c.transport}"


def summarize(contestants: list[Contestant]) -> tuple[dict, dict]:
    """Per contestant per metric medians/spread, and Heimdall-over-peer ratios (of medians and per round),
    each row against Heimdall over the same transport (None where Heimdall has no such row)."""
    stats: dict[str, dict] = {}
    for c in contestants:
        stats[c.name] = {m: spread([r.get(m) for r in c.rounds]) for m in METRICS}
    by_name = {c.name: c for c in contestants}
    ratios: dict[str, dict] = {}
    for c in contestants:
        ref = by_name.get(reference_name(c))
        if ref is c:
            continue
        ratios[c.name] = {}
        for m in METRICS:
            a, b = (stats[ref.name][m] if ref else None), stats[c.name][m]
            if ref is None or not a or not b or not b["median"]:
                ratios[c.name][m] = None
                continue
            per_round = [ra[m] / rb[m] for ra, rb in zip(ref.rounds, c.rounds)
                         if ra.get(m) is not None and rb.get(m)]
            ratios[c.name][m] = {"ratio_of_medians": round(a["median"] / b["median"], 3),
                                 "per_round": spread(per_round)}
    return stats, ratios
