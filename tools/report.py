"""performance_report.md, computed from this run's windows and nothing else.

Every sentence in the indicators and the bottleneck analysis is produced by a
branch on a measured figure; what a run did not measure is written as
"not measured", never guessed. With several repeats the report uses, per
scenario, the window with the median throughput so all of a scenario's
figures come from one consistent window.

Why one module of ~400 lines: the report is one document, and its finding
functions share the thresholds and the formatting helpers above them; split,
each half would import the other's private pieces.
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from heimdall.atomic import atomic_write_text
from tools import memgrowth, ramp
from tools.gate_metrics import error_rate

# the performance guide's indicators
HIT_AVG_US = 100.0
MISS_AVG_US = 50_000.0
HIT_QPS = 10_000.0
P99_FLAG_US = 100_000.0
ERROR_FLAG = 0.01
LOW_QPS = 1_000.0
# bottleneck analysis thresholds: a recommendation appears only past these
FUTEX_SHARE_FLAG = 0.10
MALLOCS_PER_QUERY_FLAG = 20.0
QUEUE_P99_FLAG_US = 1_000.0
CPU_BOUND_CORES = 0.85
HOT_FRAME_FLAG = 0.20
FOREIGN_FLAG_CORES = 0.5


def representative(windows: Sequence[dict]) -> dict[str, dict]:
    """Per scenario, the window with the median q/s (first-seen scenario order)."""
    by: dict[str, list[dict]] = {}
    for w in windows:
        by.setdefault(w["scenario"], []).append(w)
    out = {}
    for scen, ws in by.items():
        ranked = sorted(ws, key=lambda w: w["load"].get("qps") or 0.0)
        out[scen] = ranked[(len(ranked) - 1) // 2] | {"_n": len(ws)}
    return out


def _f(v: Any, digits: int = 0, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def _us(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1000:,.2f} ms" if v >= 10_000 else f"{v:,.1f} us"


def generator_cpu(load: dict) -> float | None:
    """The load generator's CPU use in cores (heimdall.load/1 says it in generator.cpu_percent)."""
    pct = (load.get("generator") or {}).get("cpu_percent")
    return float(pct) / 100 if isinstance(pct, (int, float)) else None


def generator_saturated(load: dict) -> bool | None:
    v = load.get("generator_saturated")
    return bool(v) if v is not None else None


def scenario_table(w: dict) -> list[str]:
    load, lat = w["load"], w["load"].get("latency_us") or {}
    cpu, facts = w.get("server_cpu") or {}, (w.get("probes_summary") or {}).get("facts", {})
    pq = (w.get("probes_summary") or {}).get("per_query_metrics", {})
    rows = [
        ("clients / window", f"{w['params']['clients']} / {w['params']['duration_s']:g} s"
                             + (f" (median-q/s window of {w['_n']} repeats)" if w.get("_n", 1) > 1 else "")),
        ("queries sent / answered", f"{_f(load.get('sent'))} / {_f(load.get('received'))}"),
        ("throughput", _f(load.get("qps"), 0, " q/s")),
        ("timeouts / errors", f"{_f(load.get('timeouts'))} / {_f(load.get('errors'))}"),
        ("error rate", _f((error_rate(load) or 0) * 100, 2, " %")),
        ("rcodes", ", ".join(f"{k} {v}" for k, v in (load.get("rcodes") or {}).items()) or "n/a"),
        ("latency min / avg / max", f"{_us(lat.get('min'))} / {_us(lat.get('avg'))} / {_us(lat.get('max'))}"),
        ("latency p50 / p90 / p95", f"{_us(lat.get('p50'))} / {_us(lat.get('p90'))} / {_us(lat.get('p95'))}"),
        ("latency p99 / p99.9", f"{_us(lat.get('p99'))} / {_us(lat.get('p999'))}"),
        ("server CPU", f"{_f(cpu.get('cores_used'), 2)} cores, {_f(cpu.get('cpu_us_per_query'), 1)} us per query"),
        ("generator CPU", f"{_f(generator_cpu(load), 2)} cores"
                          + {True: ", saturated", False: "", None: ""}[generator_saturated(load)]),
        ("other processes' CPU", f"{_f(w.get('environment', {}).get('foreign_cpu_cores'), 2)} cores"),
    ]
    if "lockprof" in (w.get("probes") or {}):
        rows.append(("futex waits", f"{_f(facts.get('futex_waits'))} ({_f(pq.get('futex_waits_per_query'), 3)}/query), "
                                    f"{_f(facts.get('futex_wait_us_total'))} us waiting"))
    if "memprof" in (w.get("probes") or {}):
        rows.append(("libc mallocs", f"{_f(pq.get('mallocs_per_query'), 2)}/query, "
                                     f"{_f(pq.get('malloc_bytes_per_query'), 0)} bytes/query"))
    if "netprof" in (w.get("probes") or {}):
        rows.append(("receive queue", f"p50 {_us(facts.get('udp_queue_p50_us'))}, p99 {_us(facts.get('udp_queue_p99_us'))}, "
                                      f"drops {_f(facts.get('udp_drops'))}, socket syscalls "
                                      f"{_f(pq.get('syscalls_per_query'), 2)}/query"))
    if len(facts.get("pids") or []) > 1:
        rows.append(("probed processes", "; ".join(
            f"{pid} {p.get('comm', '?')}" + "".join(f", {k.replace('_', ' ')} {_f(v)}" for k, v in p.items() if k != "comm")
            for pid, p in (facts.get("processes") or {}).items())))
    return ["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]


def indicators(rep: dict[str, dict]) -> list[str]:
    """The guide's key indicators, each PASS/FAIL/FLAG on a measured figure or 'not measured'."""
    lines = ["| indicator | target | measured | result |", "|---|---|---|---|"]

    def avg(s: str) -> float | None:
        return (rep[s]["load"].get("latency_us") or {}).get("avg") if s in rep else None

    def row(name: str, target: str, value: float | None, ok: bool | None, fmt) -> None:
        res = "not measured" if value is None else ("PASS" if ok else "FAIL")
        lines.append(f"| {name} | {target} | {fmt(value) if value is not None else 'n/a'} | {res} |")

    a = avg("cache-hit")
    row("cache-hit average latency", "< 100 us", a, a is not None and a < HIT_AVG_US, _us)
    a = avg("cache-miss")
    row("cache-miss average latency", "< 50 ms", a, a is not None and a < MISS_AVG_US, _us)
    q = rep["cache-hit"]["load"].get("qps") if "cache-hit" in rep else None
    row("cache-hit throughput", "> 10,000 q/s", q, q is not None and q > HIT_QPS, lambda v: _f(v, 0, " q/s"))
    for scen, w in rep.items():
        p99 = (w["load"].get("latency_us") or {}).get("p99")
        er = error_rate(w["load"])
        qps = w["load"].get("qps")
        if p99 is not None:
            lines.append(f"| {scen}: p99 latency | flag > 100 ms | {_us(p99)} | {'FLAG' if p99 > P99_FLAG_US else 'ok'} |")
        if er is not None:
            lines.append(f"| {scen}: error rate | flag > 1 % | {er * 100:.2f} % | {'FLAG' if er > ERROR_FLAG else 'ok'} |")
        if qps is not None:
            lines.append(f"| {scen}: throughput | flag < 1,000 q/s | {_f(qps, 0)} q/s | {'FLAG' if qps < LOW_QPS else 'ok'} |")
    return lines


def bottlenecks(rep: dict[str, dict], meta: dict) -> list[str]:
    """Sentences, each conditional on a measured figure, naming what this run saw."""
    out: list[str] = []
    out += _machine_findings(rep)
    out += _generator_findings(rep)
    out += _cpu_findings(rep)
    out += _lockprof_findings(rep, meta)
    out += _memprof_findings(rep, meta)
    out += _netprof_findings(rep, meta)
    out += _frame_findings(rep, meta)
    out += _scenario_contrasts(rep)
    out += _probe_losses(rep)
    return [f"- {s}" for s in out]


def _probe_losses(rep: dict) -> list[str]:
    """What a probe could not record: full maps lose events, stack-map errors lose only stacks."""
    out = []
    for scen, w in rep.items():
        for name, res in (w.get("probes") or {}).items():
            lost = res.get("lost") or {}
            if lost.get("map_full"):
                out.append(f"{scen}: the {name} probe's maps were full {lost['map_full']:,} times: "
                           "its counts are lower bounds.")
            stacks = sum(v for k, v in lost.items() if k.startswith("stack_"))
            if stacks:
                out.append(f"{scen}: the {name} probe could not record {stacks:,} stacks: its per-stack "
                           "attribution is partial (totals are unaffected).")
    return out


def _probe_state(rep: dict, meta: dict, name: str, flag: str) -> str | None:
    """None when the probe ran in some window; otherwise the 'not measured' sentence."""
    if any(name in (w.get("probes") or {}) for w in rep.values()):
        return None
    why = meta.get("probes_unavailable") if name in (meta.get("probes_requested") or []) else None
    return f"not measured ({why})" if why else f"not measured (run with {flag})"


def _generator_findings(rep: dict) -> list[str]:
    sat = [s for s, w in rep.items() if generator_saturated(w["load"])]
    known = [s for s, w in rep.items() if generator_saturated(w["load"]) is not None]
    if not known:
        return ["Load generator saturation: not measured by the generator."]
    if sat:
        return [f"The load generator was saturated in {', '.join(sat)}: those q/s figures are a floor set by the "
                "generator, not the server's limit; run the generator with more processes or use --engine dnsperf."]
    peak = max((generator_cpu(w["load"]) or 0.0) for w in rep.values())
    return [f"The load generator was not saturated in any scenario (peak {peak:.2f} cores), so the figures are the server's."]


def _cpu_findings(rep: dict) -> list[str]:
    out = []
    for scen, w in rep.items():
        cpu = w.get("server_cpu") or {}
        cores, per_q = cpu.get("cores_used"), cpu.get("cpu_us_per_query")
        if cores is None or per_q is None:
            continue
        procs = max(1, int(cpu.get("processes") or 1))
        if cores >= CPU_BOUND_CORES * procs:
            out.append(f"{scen}: the server was CPU-bound ({cores:.2f} cores busy, {per_q:.1f} us of CPU per answered "
                       f"query): throughput there is limited by per-query work; the CPU profile names where it goes.")
    return out


def _lockprof_findings(rep: dict, meta: dict) -> list[str]:
    state = _probe_state(rep, meta, "lockprof", "--lockprof")
    if state:
        return [f"Lock contention (futex): {state}."]
    out, quiet = [], []
    for scen, w in rep.items():
        facts = (w.get("probes_summary") or {}).get("facts", {})
        share = facts.get("futex_wait_share")
        if share is None:
            continue
        if share <= FUTEX_SHARE_FLAG:
            quiet.append((share, scen))
            continue
        top = facts.get("top_lock")
        top_txt = (f"; top lock {top.get('name')}: {_f(top.get('waits'))} waits, {_f(top.get('wait_us_total'))} us"
                   if isinstance(top, dict) else "")
        out.append(f"{scen}: threads spent {share * 100:.1f} % of the window waiting in futex{top_txt}. "
                   "Contention is significant: shard or shorten what that lock guards, or use worker processes "
                   "instead of threads (CPython's GIL waits show up here).")
    if quiet:
        worst, scen = max(quiet)
        if worst == 0:
            out.append(f"No thread waited in futex in {len(quiet)} scenario(s): no lock contention.")
        else:
            out.append(f"Futex waiting stayed at or below {worst * 100:.2f} % of the window in {len(quiet)} "
                       f"scenario(s) (highest in {scen}): lock contention is not a bottleneck there.")
    return out


def _memprof_findings(rep: dict, meta: dict) -> list[str]:
    state = _probe_state(rep, meta, "memprof", "--memprof")
    if state:
        return [f"Allocations (libc malloc): {state}."]
    out = []
    for scen, w in rep.items():
        pq = (w.get("probes_summary") or {}).get("per_query_metrics", {})
        calls, nbytes = pq.get("mallocs_per_query"), pq.get("malloc_bytes_per_query")
        if calls is None:
            continue
        facts = (w.get("probes_summary") or {}).get("facts", {})
        txt = f"{scen}: {calls:.1f} libc mallocs and {_f(nbytes, 0)} bytes per query"
        if calls > MALLOCS_PER_QUERY_FLAG:
            txt += ": allocation-heavy; reuse buffers and avoid building objects per query on the hot path."
        else:
            txt += (": libc allocation is not a bottleneck here (CPython's small objects come from pymalloc "
                    "arenas and are not counted).")
        share = facts.get("malloc_probe_share")
        if share is not None:
            txt += (f" The uprobes themselves cost about {facts.get('malloc_probe_us_per_call') or 0:.2f} us a call, "
                    f"{share * 100:.1f} % of the window, which inflates this run's times.")
        out.append(txt)
    return out


def _netprof_findings(rep: dict, meta: dict) -> list[str]:
    state = _probe_state(rep, meta, "netprof", "--netprof")
    if state:
        return [f"Socket receive queue: {state}."]
    out = []
    for scen, w in rep.items():
        facts = (w.get("probes_summary") or {}).get("facts", {})
        p99, drops = facts.get("udp_queue_p99_us"), facts.get("udp_drops")
        if drops:
            out.append(f"{scen}: the kernel dropped {drops:,.0f} datagrams with a full receive buffer: the server does "
                       "not drain its socket fast enough; add worker processes or raise SO_RCVBUF.")
        if p99 is not None and p99 > QUEUE_P99_FLAG_US:
            out.append(f"{scen}: queries waited up to {_us(p99)} (p99) in the socket queue before the server read them; "
                       + _queue_cause(w))
        elif p99 is not None and not drops:
            out.append(f"{scen}: receive-queue wait p99 {_us(p99)}, no drops: the socket is drained promptly.")
    return out


def _queue_cause(w: dict) -> str:
    """Why datagrams queue, from the server's CPU use and the machine's other load in that window."""
    cpu = w.get("server_cpu") or {}
    cores, procs = cpu.get("cores_used"), max(1, int(cpu.get("processes") or 1))
    foreign = (w.get("environment") or {}).get("foreign_cpu_cores")
    if cores is not None and cores >= CPU_BOUND_CORES * procs:
        return "the server was busy all the time, so its per-query work is the limit."
    if foreign is not None and foreign >= FOREIGN_FLAG_CORES:
        return (f"the server used only {cores:.2f} cores while other processes used {foreign:.2f}: it was "
                "waiting for a CPU, not for work.")
    if cores is not None:
        return (f"the server used only {cores:.2f} cores and the machine was not busy, so it was blocked in "
                "something other than CPU work (a synchronous call or sleep on the event loop).")
    return "server CPU use was not measured, so the cause is not known."


def _machine_findings(rep: dict) -> list[str]:
    raw = [(w.get("environment") or {}).get("foreign_cpu_cores") for w in rep.values()]
    vals = [v for v in raw if v is not None]
    if not vals:
        return []
    peak = max(vals)
    if peak >= FOREIGN_FLAG_CORES:
        return [f"Other processes used up to {peak:.2f} cores during the windows (median {statistics.median(vals):.2f}): "
                "wall-clock figures (q/s, latency) understate this server; compare CPU per query instead, or rerun "
                "on a quiet machine."]
    return [f"Other processes used at most {peak:.2f} cores during the windows: the machine was quiet enough."]


def _frame_findings(rep: dict, meta: dict) -> list[str]:
    profiled = {s: w["profile"] for s, w in rep.items() if isinstance(w.get("profile"), dict)}
    if not profiled:
        return ["Hottest Python frames: not measured (run with --cpuprof)."]
    out = []
    for scen, prof in profiled.items():
        if prof.get("unavailable"):
            out.append(f"{scen}: CPU profile not measured ({prof['unavailable']}).")
            continue
        frames = prof.get("top_frames") or []
        if not frames:
            out.append(f"{scen}: the CPU profile recorded no samples.")
            continue
        parts = [f"{fr['frame']} ({fr['share'] * 100:.0f} % self, {fr['total_share'] * 100:.0f} % total)"
                 for fr in frames[:3]]
        top_share = frames[0]["share"]
        txt = f"{scen}: hottest frames {', '.join(parts)}"
        if frames[0]["total_share"] >= 0.99 and top_share > HOT_FRAME_FLAG:
            txt += (f"; the first is the root frame, so its {top_share * 100:.0f} % self time is spent inside C code "
                    "it called (the event loop's polling and socket calls), not in a Python function")
        elif top_share > HOT_FRAME_FLAG:
            txt += f"; the first alone takes {top_share * 100:.0f} % of samples, so start there"
        out.append(txt + f" (flame graph: {Path(prof.get('svg', '')).name or 'n/a'}).")
    return out


def _scenario_contrasts(rep: dict) -> list[str]:
    out: list[str] = []
    hit = rep.get("cache-hit")
    if hit is None:
        return out
    hit_avg = (hit["load"].get("latency_us") or {}).get("avg")
    hit_qps = hit["load"].get("qps")
    blk = rep.get("blocking")
    info = (blk or {}).get("load", {}).get("blocking") or {}
    if info.get("forwarded_answers"):
        out.append(f"blocking: {info['forwarded_answers']:,} of {info.get('blocked_replies', 0):,} answers to "
                   "blocklisted names were forwarded answers, not blocks: the server did not load or apply the list, "
                   "so this scenario measured forwarding/caching, not blocking.")
    if blk and hit_avg and not info.get("forwarded_answers"):
        b_avg = (blk["load"].get("latency_us") or {}).get("avg")
        if b_avg and b_avg > 1.5 * hit_avg:
            out.append(f"blocking answers averaged {_us(b_avg)} against {_us(hit_avg)} for cache hits: the blocklist "
                       "lookup costs more than a cache lookup; make it a hash or suffix-trie probe per label.")
        elif b_avg:
            out.append(f"blocking answers averaged {_us(b_avg)} against {_us(hit_avg)} for cache hits: the blocklist "
                       "lookup is not a bottleneck.")
    hc = rep.get("high-concurrency")
    if hc and hit_qps and hc["load"].get("qps"):
        ratio = hc["load"]["qps"] / hit_qps
        p99_hc = (hc["load"].get("latency_us") or {}).get("p99")
        if ratio < 0.8:
            out.append(f"high-concurrency ({hc['params']['clients']} clients) reached {ratio * 100:.0f} % of the cache-hit "
                       f"throughput (p99 {_us(p99_hc)}): the server degrades with many clients.")
        else:
            out.append(f"high-concurrency ({hc['params']['clients']} clients) kept {ratio * 100:.0f} % of the cache-hit "
                       "throughput: no degradation with many clients.")
    miss = rep.get("cache-miss")
    if miss and hit_avg:
        m_avg = (miss["load"].get("latency_us") or {}).get("avg")
        if m_avg:
            out.append(f"cache misses averaged {_us(m_avg)}, {m_avg / hit_avg:.1f}x a cache hit: that difference is the "
                       "upstream round trip plus the miss path.")
    return out


def resources_summary(rows: Sequence[dict] | None) -> list[str]:
    if not rows:
        return ["Resource samples: not recorded in this run."]
    rss = [r["rss_bytes"] for r in rows]
    cpu = [r["cpu_percent"] for r in rows]
    return [f"{len(rows)} one-second samples (resource_usage.csv): CPU median {statistics.median(cpu):.0f} %, "
            f"peak {max(cpu):.0f} %; RSS from {rss[0] / 2**20:.1f} MiB to {rss[-1] / 2**20:.1f} MiB "
            f"(peak {max(rss) / 2**20:.1f} MiB); threads {max(r['threads'] for r in rows)}."]


def render(windows: Sequence[dict], meta: dict, resource_rows: Sequence[dict] | None = None) -> str:
    rep = representative(windows)
    target = meta.get("target") or {}
    lines = [
        "# Heimdall performance report",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from {len(windows)} measured windows "
        f"against {target.get('kind', '?')} at {target.get('server', '?')}.",
        f"Probes: {', '.join(meta.get('probes_requested') or []) or 'none requested'}"
        + (f" (unavailable: {meta['probes_unavailable']})" if meta.get("probes_unavailable") else "") + ".",
        "",
    ]
    if meta.get("check"):
        lines += [f"Regression check: {meta['check']['reason']} (exit {meta['check']['exit_code']}); see check_report.md.", ""]
    lines += ["## Key performance indicators", ""] + indicators(rep) + [""]
    lines += ["## Memory growth", ""] + memgrowth.report_lines(meta.get("memory_growth"), rep) + [""]
    lines += ["## Capacity", ""] + ramp.capacity_lines(meta.get("capacity")) + [""]
    lines += ["## Bottleneck analysis", ""] + bottlenecks(rep, meta) + [""]
    lines += ["## Resources", ""] + resources_summary(resource_rows) + [""]
    lines += ["## Scenarios", ""]
    for scen, w in rep.items():
        lines += [f"### {scen}", ""] + scenario_table(w) + [""]
    return "\n".join(lines)


def write_report(path: Path, windows: Sequence[dict], meta: dict, resource_rows: Sequence[dict] | None) -> Path:
    return atomic_write_text(path, render(windows, meta, resource_rows))


def check_markdown(rows, code: int, reason: str, warnings: list[str], baseline: str, th) -> str:
    lines = ["# Regression check", "", f"Baseline: {baseline}", "",
             f"Result: **{reason}** (exit {code}); thresholds: {th.max_regression_pct:g} % for times and CPU cost, "
             f"{th.count_pct:g} % for per-query counts, one-sided Mann-Whitney at alpha {th.alpha:g}.", ""]
    if warnings:
        lines += ["**Machine fingerprint differs from the baseline's:** " + "; ".join(warnings), ""]
    lines += ["| scenario | metric | baseline | current | change | p | verdict | reason |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ch = "n/a" if r.change_pct is None else f"{r.change_pct:+.1f} %"
        lines.append(f"| {r.scenario} | {r.metric} ({r.unit}){'' if r.gate else ' (info)'} | {r.baseline:.4g} | {r.current:.4g} | {ch} | "
                     f"{r.p_value:.3f} | {r.verdict} | {r.reason} |")
    return "\n".join(lines) + "\n"
