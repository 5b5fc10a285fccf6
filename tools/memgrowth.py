"""Memory against cache fill: the server's RSS per cached entry at two fills (N, then 2N names).

The guide asks that memory grow linearly with the cache and flags
exponential growth. Asking N new names (each one a cache entry in a caching
server) from a warm start, then N more, gives the RSS each N entries cost:
linear growth costs the second N about what the first did, growth that
speeds up costs more (the check: at most GROWTH_LIMIT times). The per-entry
figure also projects the memory of the guide's 1M-entry target. RSS moves
in pages and allocator arenas, so N should be thousands of names.
"""

from __future__ import annotations

import os

from tools.loadgen import parse_server
from tools.priming import prime
from tools.resources import process_tree
from tools.scenarios import question

GROWTH_LIMIT = 2.0       # second-N cost / first-N cost above this: not linear
MIN_DELTA = 256 << 10    # a fill that moved RSS less than this cannot be judged (no cache, or pages reused)
MILLION_TARGET = 1 << 30  # the guide: < 1 GB for 1M cached entries


def tree_rss(pid: int) -> int:
    """RSS of the server's process tree, bytes (0 when it is gone)."""
    total = 0
    for proc in process_tree(pid):
        try:
            total += proc.memory_info().rss
        except Exception:  # noqa: BLE001 - a worker that exits between listing and reading
            continue
    return total


def fill(server: str, zone: str, tag: str, start: int, n: int) -> int:
    """Ask n names never asked before; returns how many were answered (entries the cache could hold)."""
    family, sockaddr = parse_server(server)
    names = [question(f"f{tag}x{i}.miss.{zone}") for i in range(start, start + n)]
    return prime(family, sockaddr, names, 2.0, rounds=2, window=64)["answered"]


def cache_growth(server: str, pid: int, n: int, zone: str = "bench.test") -> dict:
    """RSS before, after N and after 2N new names; bytes per entry for each half and their ratio."""
    tag = os.urandom(3).hex()
    rss = [tree_rss(pid)]
    answered = []
    for half in range(2):
        answered.append(fill(server, zone, tag, half * n, n))
        rss.append(tree_rss(pid))
    per = [(rss[i + 1] - rss[i]) / answered[i] if answered[i] else None for i in range(2)]
    judged = rss[1] - rss[0] >= MIN_DELTA and per[0] is not None and per[1] is not None
    ratio = per[1] / per[0] if judged and per[0] and per[1] is not None else None
    linear = None if ratio is None else ratio <= GROWTH_LIMIT
    return {"names_per_fill": n, "answered": answered, "rss_bytes": rss,
            "bytes_per_entry": [round(p, 1) if p is not None else None for p in per],
            "second_to_first": round(ratio, 3) if ratio is not None else None, "linear": linear,
            "projected_1m_entries_bytes": round(max(per[1], 0) * 1_000_000) if per[1] is not None else None}


def report_lines(growth: dict | None, rep: dict[str, dict]) -> list[str]:
    """The report's memory-growth table: the guide's linear-growth and 1M-entry indicators from the
    cache fill, and each scenario's outstanding libc growth when memprof ran."""
    lines = ["| indicator | target | measured | result |", "|---|---|---|---|"]
    if not growth:
        lines.append("| memory grows linearly with cache size | second N entries <= 2x the first | n/a | not measured |")
    else:
        per, n = growth["bytes_per_entry"], growth["names_per_fill"]
        measured = (f"{per[0] if per[0] is not None else 'n/a'} then {per[1] if per[1] is not None else 'n/a'} "
                    f"bytes/entry ({n:,} then {2 * n:,} names; ratio {growth['second_to_first'] or 'n/a'})")
        result = {True: "PASS", False: "FAIL", None: "not measured (RSS moved < 256 KiB: no cache?)"}[growth["linear"]]
        lines.append(f"| memory grows linearly with cache size | second N entries <= {GROWTH_LIMIT:g}x the first "
                     f"| {measured} | {result} |")
        proj = growth["projected_1m_entries_bytes"]
        if growth["linear"] is not None and proj is not None:
            lines.append(f"| memory for 1M cached entries (projected) | < 1 GiB | {proj / 2**20:,.0f} MiB | "
                         f"{'PASS' if proj < MILLION_TARGET else 'FAIL'} |")
    for scen, w in rep.items():
        facts = (w.get("probes_summary") or {}).get("facts") or {}
        if facts.get("outstanding_bytes_per_s") is not None:
            lines.append(f"| {scen}: libc bytes outstanding (memprof) | info | "
                         f"{facts['outstanding_bytes_per_s']:,.0f} bytes/s, {facts['outstanding_bytes']:,} at "
                         "window end | info |")
    return lines
