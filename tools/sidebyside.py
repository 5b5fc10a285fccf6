"""`heimdall-tools compare`: Heimdall side by side with Unbound, dnsmasq or any server given by address.

Every contestant forwards to the same LocalUpstream (NSD) with the same cache
size and one server thread/process each (N with --workers). Caches are warmed
(every name of the warm set asked until answered), then each round runs the
same workloads on every contestant, the order rotated each round
(A B C, B C A, C A B, ...) so that machine drift hits all alike:

* ``qps_dnsperf``: cache-hit throughput, ``dnsperf -c 20 -T 1`` closed loop;
* ``qps_builtin``: the same with the built-in generator (20 clients, 1 process);
* ``p50_us_*`` / ``p99_us_*``: latency at a fixed offered load (10,000 q/s open
  loop), with the built-in generator and with ``dnsperf -Q 10000 -v``;
* ``cpu_pct_per_10k``: psutil CPU time of the server's process tree over the
  dnsperf 10,000 q/s window, as percent of one core, scaled to 10,000 answered q/s;
* ``rss_mb``: resident memory of the server's tree after the round.

Figures are medians over rounds with min-max spread; ratios are Heimdall's
median over the peer's (and the per-round ratios' spread). Optional phases:
``--concurrency 1000,10000`` (closed-loop clients, loss = unanswered queries),
``--fill N`` (N unique names cached in Heimdall: RSS and bytes per entry), ``--scaling``
(Heimdall with twice the workers as an extra contestant), ``--variant
NAME:HEIMDALL_X=Y[,...]`` (Heimdall with other settings, for A/B of a knob
inside one interleaved run), ``--bare`` (a
uvloop responder that only echoes the question with a canned answer: the
floor any Python + uvloop server stands on). The report
(compare.json, compare.png, compare.md) goes to
performance_results/compare-<timestamp>/, every file written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tools import latency
from heimdall.atomic import atomic_write_text
from tools.dnsperf import dnsperf_binary, parse_summary, parse_verbose
from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.resources import process_tree, tree_cpu_seconds

SCHEMA = "heimdall.compare/1"
KNOWN_PEERS = ("unbound", "dnsmasq")
OFFERED_QPS = 10_000
METRICS = {  # name -> (label, unit, higher is better)
    "qps_dnsperf": ("cache-hit throughput, dnsperf -c 20 -T 1", "q/s", True),
    "qps_builtin": ("cache-hit throughput, built-in generator, 20 clients", "q/s", True),
    "p50_us_builtin": ("p50 latency at 10,000 q/s offered, built-in", "us", False),
    "p99_us_builtin": ("p99 latency at 10,000 q/s offered, built-in", "us", False),
    "p50_us_dnsperf": ("p50 latency at 10,000 q/s offered, dnsperf", "us", False),
    "p99_us_dnsperf": ("p99 latency at 10,000 q/s offered, dnsperf", "us", False),
    "cpu_pct_per_10k": ("server CPU per 10,000 q/s (% of one core)", "%", False),
    "rss_mb": ("resident memory (server tree)", "MB", False),
}


@dataclass
class Contestant:
    name: str
    kind: str                       # heimdall | unbound | dnsmasq | external
    addr: str
    pid: int | None
    threads: int
    server: Any = None              # the peers.PeerServer we started (None for external)
    rounds: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def sockaddr(self) -> tuple[str, int]:
        host, _, port = self.addr.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass
class CompareOptions:
    peers: list[str] = field(default_factory=lambda: list(KNOWN_PEERS))
    rounds: int = 3
    duration: float = 5.0
    workers: int = 1
    cache_entries: int = 100_000
    warm_set: int = 1000
    servers: list[str] = field(default_factory=list)     # [NAME=]HOST:PORT of running servers
    pids: list[int] = field(default_factory=list)        # their pids, in the same order
    concurrency: list[int] = field(default_factory=list)
    fill: int = 0
    scaling: bool = False
    bare: bool = False                                   # add the Python + uvloop floor as a contestant
    variants: dict = field(default_factory=dict)         # name -> HEIMDALL_* (or PYTHONPATH) env: extra Heimdall contestants
    engines: tuple[str, ...] = ("dnsperf", "builtin")
    results_dir: Path = Path("performance_results")
    heimdall_env: dict = field(default_factory=dict)


# ---------------------------------------------------------------- statistics

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


# ---------------------------------------------------------------- workloads

def warm_file(path: Path, count: int) -> Path:
    from tools.scenarios import warm_names
    path.write_text("".join(f"{n} {'AAAA' if i % 4 == 3 else 'A'}\n"
                            for i, n in enumerate(warm_names(count))))
    return path


def _dnsperf(c: Contestant, names: Path, seconds: float, args: list[str], out: Path,
             verbose: bool = False) -> tuple[dict, float | None, float]:
    """Run dnsperf; returns (summary, server CPU seconds over the run or None, wall seconds)."""
    host, port = c.sockaddr
    cmd = [dnsperf_binary(), "-s", host, "-p", str(port), "-d", str(names), "-l", f"{seconds:g}", *args]
    if verbose:
        cmd.append("-v")
    cpu0 = tree_cpu_seconds(c.pid) if c.pid else None
    t0 = time.monotonic()
    with open(out, "wb") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=seconds + 60).returncode
    wall = time.monotonic() - t0
    cpu1 = tree_cpu_seconds(c.pid) if c.pid else None
    text = out.read_text(errors="replace")[-8192:] if not verbose else _tail(out)
    summary = parse_summary(text)
    summary["exit_status"] = rc
    summary["command"] = " ".join(cmd)
    return summary, (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None, wall


def _tail(path: Path, limit: int = 8192) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - limit))
        return f.read().decode(errors="replace")


def warm(c: Contestant, names: Path, work: Path) -> dict:
    """Ask every warm-set name until answered, then one short dnsperf pass: the cache is hot."""
    from tools.loadgen import prime
    from tools.scenarios import question, warm_names
    qs = [question(n, "AAAA" if i % 4 == 3 else "A") for i, n in enumerate(warm_names(sum(1 for _ in open(names))))]
    fam = socket.AF_INET6 if ":" in c.sockaddr[0] else socket.AF_INET
    primed = prime(fam, c.sockaddr, qs, 2.0)
    _dnsperf(c, names, 1, ["-c", "20", "-T", "1"], work / f"warm-{c.name}.txt")
    return primed


def measure_round(c: Contestant, opts: CompareOptions, names: Path, work: Path) -> dict:
    from tools.loadgen import LoadConfig, run_load
    r: dict[str, Any] = {"notes": []}
    d = opts.duration
    if "dnsperf" in opts.engines:
        s, _, _ = _dnsperf(c, names, d, ["-c", "20", "-T", "1"], work / "tput.txt")
        r["qps_dnsperf"] = s["qps"]
        r["lost_dnsperf"] = s["lost"]
    if "builtin" in opts.engines:
        res = run_load(LoadConfig(test_type="cache-hit", server=c.addr, duration=d, clients=20, processes=1,
                                  warmup=0.5, warm_set=opts.warm_set, prime=False))
        r["qps_builtin"] = res["qps"]
        r["builtin_generator_saturated"] = res["generator_saturated"]
        r["notes"] += res["warnings"]
        res = run_load(LoadConfig(test_type="cache-hit", server=c.addr, duration=d, clients=64, processes=1,
                                  qps=OFFERED_QPS, warmup=0.5, warm_set=opts.warm_set, prime=False))
        r["p50_us_builtin"] = res["latency_us"]["p50"]
        r["p99_us_builtin"] = res["latency_us"]["p99"]
        r["achieved_qps_builtin"] = res["qps"]
        r["timeouts_builtin_10k"] = res["timeouts"]
        r["machine_overloaded"] = res["machine_overloaded"]
        r["notes"] += res["warnings"]
    if "dnsperf" in opts.engines:
        out = work / "open.txt"
        s, cpu, wall = _dnsperf(c, names, d, ["-c", "20", "-T", "1", "-Q", str(OFFERED_QPS)], out, verbose=True)
        counts, _, _ = parse_verbose(out, {})
        lat = latency.summarize(counts)
        r["p50_us_dnsperf"], r["p99_us_dnsperf"] = lat["p50"], lat["p99"]
        r["achieved_qps_dnsperf"] = s["qps"]
        if cpu is not None and s["qps"] > 0:
            window = s["run_time"] or wall
            pct = 100.0 * cpu / window
            r["cpu_pct_at_offered"] = round(pct, 2)
            r["cpu_pct_per_10k"] = round(pct * OFFERED_QPS / s["qps"], 2)
        out.unlink(missing_ok=True)
    if c.pid:
        r["rss_mb"] = round(tree_rss(c.pid) / 1e6, 2)
    if not r["notes"]:
        del r["notes"]
    return r


def tree_rss(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001  (gone meanwhile)
            pass
    return total


def measure_concurrency(c: Contestant, clients: int, opts: CompareOptions) -> dict:
    """N closed-loop clients (one socket each) on the cache-hit set: loss = queries never answered."""
    from tools.loadgen import LoadConfig, run_load
    res = run_load(LoadConfig(test_type="cache-hit", server=c.addr, duration=min(opts.duration, 5.0),
                              clients=clients, warmup=0.5, warm_set=opts.warm_set, prime=False,
                              timeout_ms=2000))
    return {"clients": clients, "sent": res["sent"], "received": res["received"], "timeouts": res["timeouts"],
            "lost": res["sent"] - res["received"], "qps": res["qps"], "p99_us": res["latency_us"]["p99"],
            "processes": res["processes"], "warnings": res["warnings"]}


def measure_fill(c: Contestant, count: int, work: Path) -> dict:
    """Cache `count` unique names (one query each); RSS before/after and the growth per answered name."""
    names = work / "fill.txt"
    if not names.exists():
        names.write_text("".join(f"fill{i}.bench.test A\n" for i in range(count)))
    rss0 = tree_rss(c.pid)
    s, _, wall = _dnsperf(c, names, 3600, ["-n", "1", "-c", "20", "-T", "1", "-q", "200", "-t", "5"],
                          work / "fill-out.txt")
    time.sleep(0.5)
    rss1 = tree_rss(c.pid)
    done = s["completed"]
    return {"names": count, "answered": done, "seconds": round(wall, 1), "rss_before_mb": round(rss0 / 1e6, 1),
            "rss_after_mb": round(rss1 / 1e6, 1),
            "bytes_per_entry": round((rss1 - rss0) / done, 1) if done else None}


# ---------------------------------------------------------------- the run

def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """`NAME:HEIMDALL_X=Y[,HEIMDALL_Z=W]` (or `NAME:PYTHONPATH=DIR`, another checkout) -> (NAME, env)."""
    vname, sep, pairs = spec.partition(":")
    kv = dict(p.partition("=")[::2] for p in pairs.split(",") if p)
    if not sep or not vname or vname == "heimdall" or not kv or any(
            not (k.startswith("HEIMDALL_") or k == "PYTHONPATH") or not v for k, v in kv.items()):
        raise ToolError(f"bad --variant {spec!r}: expected NAME:HEIMDALL_X=Y[,HEIMDALL_Z=W] "
                        "(or PYTHONPATH=DIR)", EXIT_ENVIRONMENT)
    if "PYTHONPATH" in kv and not (Path(kv["PYTHONPATH"]) / "heimdall" / "__main__.py").is_file():
        raise ToolError(f"bad --variant {spec!r}: {kv['PYTHONPATH']} is not a Heimdall checkout "
                        "(no heimdall/__main__.py there)", EXIT_ENVIRONMENT)
    return vname, kv


def _start(kind: str, name: str, upstream: str, opts: CompareOptions, workers: int,
           env: dict[str, str] | None = None) -> Contestant:
    """Start one contestant; `env` (a variant's) goes over opts.heimdall_env for Heimdall."""
    from tools import peers
    if kind == "heimdall":
        env = {"HEIMDALL_CACHE_CAPACITY": str(opts.cache_entries), **opts.heimdall_env, **(env or {})}
        srv = peers.HeimdallServer(upstream, env=env, workers=workers).start()
    elif kind == "unbound":
        srv = peers.UnboundServer(upstream, threads=workers, cache_entries=opts.cache_entries).start()
    elif kind == "dnsmasq":
        srv = peers.DnsmasqServer(upstream, cache_size=opts.cache_entries).start()
    else:
        raise ToolError(f"unknown peer {kind!r}: choose from {', '.join(KNOWN_PEERS)}", EXIT_ENVIRONMENT)
    threads = 1 if kind == "dnsmasq" else workers
    return Contestant(name, kind, srv.addr, srv.pid, threads, server=srv)


BARE_RESPONDER = r"""
import asyncio, socket, sys, uvloop
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.setblocking(False)
FLAGS, COUNTS = b"\x81\x80", b"\x00\x01\x00\x01\x00\x00\x00\x00"
ANSWER = bytes.fromhex("c00c000100010000012c0004c0000201")
recvfrom, sendto = s.recvfrom, s.sendto
def readable():
    try:
        d, a = recvfrom(4096)
    except BlockingIOError:
        return
    sendto(d[:2] + FLAGS + COUNTS + d[12:] + ANSWER, a)
async def main():
    asyncio.get_running_loop().add_reader(s.fileno(), readable)
    await asyncio.sleep(1e9)
uvloop.run(main())
"""


class BareResponder:
    """The Python + uvloop floor: echo the question with one canned A record (no cache, no parsing)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "BareResponder":
        import sys
        from tools.nsd import free_port, wait_for_dns
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", BARE_RESPONDER, str(self.port)],
                                     start_new_session=True, stderr=subprocess.DEVNULL)
        try:
            wait_for_dns("127.0.0.1", self.port, proc=self.proc)
        except ToolError:
            self.stop()
            raise
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _installed(kind: str) -> bool:
    binary = {"unbound": "unbound", "dnsmasq": "dnsmasq"}[kind]
    return bool(shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"))


def external_contestants(servers: list[str], pids: list[int]) -> list[Contestant]:
    out = []
    for i, spec in enumerate(servers):
        name, _, addr = spec.rpartition("=")
        name = name or f"server{i + 1}"
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ToolError(f"bad --server {spec!r}: expected [NAME=]HOST:PORT", EXIT_ENVIRONMENT)
        pid = pids[i] if i < len(pids) else None
        out.append(Contestant(name, "external", addr, pid, 0))
    return out


def new_results_dir(base: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    d = Path(base) / f"compare-{stamp}"
    n = 1
    while d.exists():
        n += 1
        d = Path(base) / f"compare-{stamp}-{n}"
    d.mkdir(parents=True)
    return d


def run_compare(opts: CompareOptions, out_dir: Path | None = None, say=print) -> dict:
    """Start, warm, measure interleaved, summarize; write compare.json/.md/.png. Returns the report."""
    from tools.nsd import LocalUpstream
    dnsperf_binary()  # fail early, with the fix named, when dnsperf is missing
    out_dir = out_dir or new_results_dir(opts.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if opts.fill:
        opts.cache_entries = max(opts.cache_entries, opts.fill + opts.warm_set + 1000)
    skipped: list[dict] = []
    contestants: list[Contestant] = []
    work = Path(tempfile.mkdtemp(prefix="heimdall-compare-"))
    started = time.time()
    try:
        with LocalUpstream() as up:
            contestants.append(_start("heimdall", "heimdall", up.addr, opts, opts.workers))
            if opts.scaling:
                contestants.append(_start("heimdall", f"heimdall-{opts.workers * 2}w", up.addr, opts,
                                          opts.workers * 2))
            for kind in opts.peers:
                if kind not in KNOWN_PEERS:
                    raise ToolError(f"unknown peer {kind!r}: choose from {', '.join(KNOWN_PEERS)}",
                                    EXIT_ENVIRONMENT)
                if not _installed(kind):
                    skipped.append({"peer": kind, "why": f"{kind} is not installed (scripts/setup.sh installs it)"})
                    say(f"note: {kind} skipped: not installed")
                    continue
                try:
                    contestants.append(_start(kind, kind, up.addr, opts, opts.workers))
                except ToolError as exc:
                    skipped.append({"peer": kind, "why": str(exc)})
                    say(f"note: {kind} skipped: {exc}")
            for vname, venv in opts.variants.items():
                contestants.append(_start("heimdall", vname, up.addr, opts, opts.workers, venv))
            if opts.bare:
                b = BareResponder().start()
                contestants.append(Contestant("bare-uvloop", "bare", b.addr, b.pid, 1, server=b))
            contestants += external_contestants(opts.servers, opts.pids)
            names = warm_file(work / "names.txt", opts.warm_set)
            for c in contestants:
                c.extra["primed"] = warm(c, names, work)
                if c.pid:
                    c.extra["rss_warm_mb"] = round(tree_rss(c.pid) / 1e6, 2)
            for r in range(opts.rounds):
                k = r % len(contestants)
                order = contestants[k:] + contestants[:k]
                for c in order:
                    res = measure_round(c, opts, names, work)
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
            if opts.fill:
                for c in contestants:  # Heimdall only: the goal is its own, and dnsmasq fills at ~400 q/s
                    if c.pid and c.name == "heimdall":
                        c.extra["fill"] = measure_fill(c, opts.fill, work)
                        say(f"fill {c.name}: {c.extra['fill']}")
    finally:
        for c in contestants:
            if c.server is not None:
                c.server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = build_report(opts, contestants, skipped, started)
    write_report(report, out_dir)
    report["results_dir"] = str(out_dir)
    return report


def build_report(opts: CompareOptions, contestants: list[Contestant], skipped: list[dict], started: float) -> dict:
    stats, ratios = summarize(contestants)
    report = {
        "schema": SCHEMA,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "host": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
        "options": {"peers": opts.peers, "rounds": opts.rounds, "duration_s": opts.duration,
                    "workers": opts.workers, "cache_entries": opts.cache_entries, "warm_set": opts.warm_set,
                    "offered_qps": OFFERED_QPS, "concurrency": opts.concurrency, "fill": opts.fill,
                    "scaling": opts.scaling, "bare": opts.bare, "heimdall_env": opts.heimdall_env, "variants": opts.variants, "engines": list(opts.engines), "servers": opts.servers},
        "metrics": {m: {"label": lab, "unit": u, "higher_is_better": hb} for m, (lab, u, hb) in METRICS.items()},
        "contestants": [{"name": c.name, "kind": c.kind, "addr": c.addr, "pid": c.pid, "threads": c.threads,
                         "rounds": c.rounds, **c.extra} for c in contestants],
        "skipped": skipped,
        "stats": stats,
        "ratios_to_heimdall": ratios,
        "ratio_definition": "Heimdall's median / the peer's median (per_round: the same within each round)",
    }
    report["goals"] = goals(report)
    return report


# ---------------------------------------------------------------- goals

def _med(report: dict, name: str, metric: str) -> float | None:
    s = report["stats"].get(name, {}).get(metric)
    return s["median"] if s else None


def goals(report: dict) -> list[dict]:
    """The performance guide's goals with this run's values: goal, value, pass/fail (None: not measured)."""
    rows: list[dict] = []
    st, rat = report["stats"], report["ratios_to_heimdall"]

    def row(goal: str, value: Any, ok: bool | None, how: str) -> None:
        rows.append({"goal": goal, "measured": value, "pass": ok, "how": how})

    q = _med(report, "heimdall", "qps_dnsperf")
    row("cached throughput > 50,000 q/s", None if q is None else f"{q:,.0f} q/s",
        None if q is None else q > 50_000, "dnsperf -c 20 -T 1, cache hits, median of rounds")
    for peer, bar in (("unbound", 0.75), ("dnsmasq", 0.9)):
        r = (rat.get(peer) or {}).get("qps_dnsperf")
        row(f"cached throughput >= {bar}x {peer}",
            None if not r else f"{r['ratio_of_medians']:.2f}x (rounds {r['per_round']['min']:.2f}-"
                               f"{r['per_round']['max']:.2f})",
            None if not r else r["ratio_of_medians"] >= bar, "same dnsperf run, interleaved rounds")
    p99 = _med(report, "heimdall", "p99_us_builtin")
    row("cache-hit p99 at 10,000 q/s offered < 100 us", None if p99 is None else f"{p99:.0f} us",
        None if p99 is None else p99 < 100, "built-in generator, open loop 10,000 q/s, median of rounds")
    p99d = _med(report, "heimdall", "p99_us_dnsperf")
    if p99d is not None:
        row("(same, dnsperf -Q 10000) < 100 us", f"{p99d:.0f} us", p99d < 100, "dnsperf -c 20 -T 1 -Q 10000 -v")
    for metric, gen in (("p99_us_builtin", "built-in"), ("p99_us_dnsperf", "dnsperf")):
        r = (rat.get("unbound") or {}).get(metric)
        if r:
            row(f"cache-hit p99 <= 1.3x Unbound's ({gen})", f"{r['ratio_of_medians']:.2f}x",
                r["ratio_of_medians"] <= 1.3, "same generator, same rounds")
    for c in report["contestants"]:
        if c["name"] != "heimdall":
            continue
        for conc in c.get("concurrency", []):
            if "error" in conc:
                row(f"{conc['clients']:,} concurrent clients without loss", conc["error"], False, "")
                continue
            row(f"{conc['clients']:,} concurrent clients without loss",
                f"{conc['lost']} of {conc['sent']:,} unanswered ({conc['qps']:,.0f} q/s, p99 {conc['p99_us']} us)",
                conc["lost"] == 0, f"built-in generator, {conc['clients']} closed-loop clients, one socket each")
        fill = c.get("fill")
        if fill and fill.get("bytes_per_entry"):
            proj = fill["rss_after_mb"] + (1_000_000 - fill["answered"]) * fill["bytes_per_entry"] / 1e6
            what = "measured" if fill["answered"] >= 1_000_000 else f"projected from {fill['answered']:,}"
            row("1M cached entries < 400 MB resident",
                f"{proj:.0f} MB ({what}; {fill['bytes_per_entry']:.0f} B/entry)", proj < 400,
                f"--fill {fill['names']}: unique names, RSS before/after")
    cpu = _med(report, "heimdall", "cpu_pct_per_10k")
    row("CPU at 10,000 q/s < 20% of a core", None if cpu is None else f"{cpu:.1f}%",
        None if cpu is None else cpu < 20, "psutil CPU time of the server over dnsperf -Q 10000")
    w2 = [n for n in st if n.startswith("heimdall-") and n.endswith("w")]
    if w2:
        a, b = _med(report, "heimdall", "qps_dnsperf"), _med(report, w2[0], "qps_dnsperf")
        cores = report["host"]["cpus"]
        if a and b:
            row(f"{w2[0]} scales ({cores} cores here)",
                f"{b / a:.2f}x of 1 worker ({b:,.0f} vs {a:,.0f} q/s)",
                None if (cores or 1) < 3 else b / a > 1.5,
                "same dnsperf run; with 2 cores the generator takes one, so scaling cannot show here")
    return rows


# ---------------------------------------------------------------- output

def render_markdown(report: dict) -> str:
    names = [c["name"] for c in report["contestants"]]
    lines = [f"# Heimdall side by side ({report['started']}, {report['options']['rounds']} rounds x "
             f"{report['options']['duration_s']:g} s, {report['host']['cpus']} cores, load "
             f"{report['host']['load_average'][0]:.1f})", ""]
    head = "| metric | " + " | ".join(names) + " |"
    lines += [head, "|" + "---|" * (len(names) + 1)]
    for m, meta in report["metrics"].items():
        cells = []
        for n in names:
            s = report["stats"][n][m]
            cell = "-" if not s else f"{s['median']:,.1f} ({s['min']:,.1f}-{s['max']:,.1f})"
            r = report["ratios_to_heimdall"].get(n, {}).get(m)
            if r:
                cell += f"; H/{n} {r['ratio_of_medians']:.2f}"
            cells.append(cell)
        lines.append(f"| {meta['label']} ({meta['unit']}) | " + " | ".join(cells) + " |")
    lines += ["", "Cells: median (min-max over rounds); H/peer = Heimdall's median over the peer's.", ""]
    for s in report["skipped"]:
        lines.append(f"- skipped {s['peer']}: {s['why']}")
    lines += ["", "## Goals", "", "| goal | measured | pass | how |", "|---|---|---|---|"]
    for g in report["goals"]:
        ok = {True: "pass", False: "FAIL", None: "n/a"}[g["pass"]]
        lines.append(f"| {g['goal']} | {g['measured'] if g['measured'] is not None else 'not measured'} | {ok} | {g['how']} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> None:
    atomic_write_text(out_dir / "compare.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "compare.md", render_markdown(report))
    from tools.chart import compare_chart
    compare_chart(report, out_dir / "compare.png")
