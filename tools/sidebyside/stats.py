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


def summarize(contestants: list[Contestant]) -> tuple[dict, dict]:
    """Per contestant per metric medians/spread, and Heimdall-over-peer ratios (of medians and per round)."""
    stats: dict[str, dict] = {}
    for c in contestants:
        stats[c.name] = {m: spread([r.get(m) for r in c.rounds]) for m in METRICS}
    ref = contestants[0]
    ratios: dict[str, dict] = {}
    for c in contestants[1:]:
        ratios[c.name] = {}
        for m in METRICS:
            a, b = stats[ref.name][m], stats[c.name][m]
            if not a or not b or not b["median"]:
                ratios[c.name][m] = None
                continue
            per_round = [ra[m] / rb[m] for ra, rb in zip(ref.rounds, c.rounds)
                         if ra.get(m) is not None and rb.get(m)]
            ratios[c.name][m] = {"ratio_of_medians": round(a["median"] / b["median"], 3),
                                 "per_round": spread(per_round)}
    return stats, ratios
