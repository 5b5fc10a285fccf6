"""The side-by-side run: start every contestant on one NSD, warm them, interleave the rounds, report."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tools.dnsperf import dnsperf_binary
from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.files import new_results_dir
from tools.provenance import provenance
from tools.sidebyside import contestants as procs
from tools.sidebyside.contestants import BareResponder, Contestant, external_contestants, start_contestant, tree_rss
from tools.sidebyside.goals import goals
from tools.sidebyside.markdown import write_report
from tools.sidebyside.options import KNOWN_PEERS, METRICS, OFFERED_QPS, CompareOptions
from tools.sidebyside.stats import summarize
from tools.sidebyside.transports import lab_pki, serves, transport_rows
from tools.sidebyside.workloads import measure_concurrency, measure_fill, measure_round, warm, warm_file
from tools.testpki import ServerCert

SCHEMA = "heimdall.compare/1"
Say = Callable[[str], None]


def run_compare(opts: CompareOptions, out_dir: Path | None = None, say: Say = print) -> dict:
    """Start, warm, measure interleaved, summarize; write compare.json/.md/.png. Returns the report."""
    from tools.nsd import LocalUpstream

    dnsperf_binary()  # fail early, with the fix named, when dnsperf is missing
    out_dir = out_dir or new_results_dir(opts.results_dir, "compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    if opts.fill:
        opts.cache_entries = max(opts.cache_entries, opts.fill + opts.warm_set + 1000)
    skipped: list[dict] = []
    contestants: list[Contestant] = []
    work = Path(tempfile.mkdtemp(prefix="heimdall-compare-"))
    started = time.time()
    try:
        pki = lab_pki(opts.transports, work)
        with LocalUpstream() as up:
            start_all(opts, up.addr, contestants, skipped, say, pki)
            measure_all(opts, contestants, work, say, up.pid)
    finally:
        for c in contestants:
            if c.server is not None:
                c.server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = build_report(opts, contestants, skipped, started)
    write_report(report, out_dir)
    report["results_dir"] = str(out_dir)
    return report


def start_all(opts: CompareOptions, upstream: str, contestants: list[Contestant], skipped: list[dict],
              say: Say, pki: ServerCert | None = None) -> None:
    """Heimdall first (ratios are to it), then its scaled twin, the peers, variants, bare, external servers;
    each as one row per transport it serves (tools/sidebyside/transports.py), UDP rows first.

    Appends to `contestants` as each one starts, so the caller stops those
    already running when a later one fails."""
    tls = (str(pki.cert), str(pki.key)) if pki else None

    def skip(peer: str, why: str, transport: str | None = None) -> None:
        skipped.append({"peer": peer, "why": why} | ({"transport": transport} if transport else {}))
        say(f"note: {peer} skipped" + (f" over {transport}" if transport else "") + f": {why}")

    def add(c: Contestant) -> None:
        rows, skips = transport_rows(c, opts.transports, pki)
        contestants.extend(rows)
        for s in skips:
            skip(s["peer"], s["why"], s["transport"])
        if not rows and c.server is not None:
            c.server.stop()

    def wanted(kind: str) -> bool:
        return bool(set(serves(kind)) & set(opts.transports))

    if wanted("heimdall"):
        add(start_contestant("heimdall", "heimdall", upstream, opts, opts.workers, tls=tls))
        if opts.scaling:
            add(start_contestant("heimdall", f"heimdall-{opts.workers * 2}w", upstream, opts, opts.workers * 2,
                                 tls=tls))
    for kind in opts.peers:
        if kind not in KNOWN_PEERS:
            raise ToolError(f"unknown peer {kind!r}: choose from {', '.join(KNOWN_PEERS)}", EXIT_ENVIRONMENT)
        if not procs.installed(kind):
            skip(kind, f"{kind} is not installed (scripts/setup.sh installs it)")
            continue
        if not wanted(kind):
            skip(kind, f"{kind} serves none of {', '.join(opts.transports)}")
            continue
        try:
            add(start_contestant(kind, kind, upstream, opts, opts.workers, tls=tls))
        except ToolError as exc:
            skip(kind, str(exc))
    for vname, venv in opts.variants.items():
        if wanted("heimdall"):
            add(start_contestant("heimdall", vname, upstream, opts, opts.workers, venv, tls=tls))
    if opts.bare:
        b = BareResponder().start()
        add(Contestant("bare-uvloop", "bare", b.addr, b.pid, 1, server=b))
    for ext in external_contestants(opts.servers, opts.pids):
        add(ext)
    contestants.sort(key=lambda c: opts.transports.index(c.transport))  # stable: each transport's rows together


def measure_all(opts: CompareOptions, contestants: list[Contestant], work: Path, say: Say,
                upstream_pid: int | None = None) -> None:
    """Warm every cache, run the interleaved rounds, then the optional concurrency and fill phases."""
    names = warm_file(work / "names.txt", opts.warm_set)
    for c in contestants:
        c.extra["primed"] = warm(c, names, work)
        if c.pid:
            c.extra["rss_warm_mb"] = round(tree_rss(c.pid) / 1e6, 2)
    for r in range(opts.rounds):
        k = r % len(contestants)
        for c in contestants[k:] + contestants[:k]:   # the order rotates each round: drift hits all alike
            res = measure_round(c, opts, names, work, tag=f"r{r + 1}-{c.slug}", upstream_pid=upstream_pid)
            res["round"] = r + 1
            c.rounds.append(res)
            say(f"round {r + 1}/{opts.rounds} {c.name:12s} " + "  ".join(
                f"{m}={res[m]:.0f}" if m.startswith("qps") else f"{m}={res[m]}"
                for m in METRICS if res.get(m) is not None))
    for n in opts.concurrency:
        for c in contestants:
            try:
                c.extra.setdefault("concurrency", []).append(measure_concurrency(c, n, opts))
            except (ToolError, OSError) as exc:
                c.extra.setdefault("concurrency", []).append({"clients": n, "error": str(exc)})
            say(f"{n} clients {c.name}: {c.extra['concurrency'][-1]}")
    if opts.capacity:
        for c in contestants:
            if c.transport != "udp":
                continue  # the ramp drives UDP
            c.extra["capacity"] = measure_capacity(c)
            say(f"capacity {c.name}: {c.extra['capacity']['capacity_qps']} q/s ({c.extra['capacity']['limit']})")
    if opts.fill:
        for c in contestants:  # Heimdall only: the goal is its own, and dnsmasq fills at ~400 q/s
            if c.pid and c.name == "heimdall":
                c.extra["fill"] = measure_fill(c, opts.fill, work)
                say(f"fill {c.name}: {c.extra['fill']}")


def measure_capacity(c: Contestant) -> dict:
    """The contestant's cache-hit capacity by the open-loop ramp (tools/ramp.py), within a minute."""
    from tools.ramp import RampConfig, ramp

    r = ramp(RampConfig(server=c.addr, pid=c.pid, budget_s=60.0))
    return {k: r[k] for k in ("capacity_qps", "limit", "saturation", "knee", "elapsed_s")}


def build_report(opts: CompareOptions, contestants: list[Contestant], skipped: list[dict], started: float) -> dict:
    """The heimdall.compare/1 document: options, every round, stats, ratios to Heimdall and the goals."""
    stats, ratios = summarize(contestants)
    report = {
        "schema": SCHEMA,
        **provenance(),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "host": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
        "options": {"peers": opts.peers, "rounds": opts.rounds, "duration_s": opts.duration,
                    "workers": opts.workers, "cache_entries": opts.cache_entries, "warm_set": opts.warm_set,
                    "offered_qps": OFFERED_QPS, "concurrency": opts.concurrency, "fill": opts.fill,
                    "capacity": opts.capacity,
                    "scaling": opts.scaling, "bare": opts.bare, "heimdall_env": opts.heimdall_env,
                    "variants": opts.variants, "engines": list(opts.engines), "servers": opts.servers,
                    "workloads": list(opts.workloads), "transports": list(opts.transports)},
        "metrics": {m: {"label": lab, "unit": u, "higher_is_better": hb} for m, (lab, u, hb) in METRICS.items()},
        "contestants": [{"name": c.name, "kind": c.kind, "transport": c.transport, "addr": c.addr, "pid": c.pid,
                         "threads": c.threads, "rounds": c.rounds, **c.extra} for c in contestants],
        "skipped": skipped,
        "stats": stats,
        "ratios_to_heimdall": ratios,
        "ratio_definition": "Heimdall's median / the peer's median (per_round: the same within each round)",
    }
    report["goals"] = goals(report)
    return report
