"""The measurements of a side-by-side run: warming a cache, one round's workloads, the optional phases."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tools import latency
from tools.dnsperf import dnsperf_binary, parse_summary, parse_verbose, transport_args
from tools.resources import tree_cpu_seconds
from tools.sidebyside.contestants import Contestant, tree_rss
from tools.sidebyside.options import OFFERED_QPS, CompareOptions


def warm_file(path: Path, count: int) -> Path:
    from tools.scenarios import warm_names

    path.write_text("".join(f"{n} {'AAAA' if i % 4 == 3 else 'A'}\n"
                            for i, n in enumerate(warm_names(count))))
    return path


def dnsperf_window(c: Contestant, names: Path, seconds: float, args: list[str], out: Path,
             verbose: bool = False) -> tuple[dict, float | None, float]:
    """Run dnsperf; returns (summary, server CPU seconds over the run or None, wall seconds)."""
    host, port = c.sockaddr
    cmd = [dnsperf_binary(), "-s", host, "-p", str(port), "-d", str(names), "-l", f"{seconds:g}", *args,
           *transport_args(c.transport, 0, c.server_name or host, port)]
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
    from tools.priming import prime
    from tools.scenarios import question, warm_names

    qs = [question(n, "AAAA" if i % 4 == 3 else "A") for i, n in enumerate(warm_names(sum(1 for _ in open(names))))]
    host, _, port = (c.udp_addr or c.addr).rpartition(":")
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    primed = prime(fam, (host, int(port)), qs, 2.0)
    dnsperf_window(c, names, 1, ["-c", "20", "-T", "1"], work / f"warm-{c.slug}.txt")
    return primed


def over(c: Contestant) -> dict[str, Any]:
    """The built-in generator's transport settings for this row (persistent connections)."""
    return {"transport": c.transport, "ca_file": c.ca_file, "tls_server_name": c.server_name}


def measure_round(c: Contestant, opts: CompareOptions, names: Path, work: Path, tag: str = "r",
                  upstream_pid: int | None = None) -> dict:
    """One round's workloads on one contestant: throughput, latency at the offered rate, CPU, RSS.

    `tag` names this (round, contestant) in the unique names of the miss and mixed workloads;
    `upstream_pid` is the upstream's, whose CPU is read beside the misses."""
    from tools.loadgen import LoadConfig, run_load

    r: dict[str, Any] = {"notes": []}
    d = opts.duration
    if "dnsperf" in opts.engines:
        s, _, _ = dnsperf_window(c, names, d, ["-c", "20", "-T", "1"], work / "tput.txt")
        r["qps_dnsperf"] = s["qps"]
        r["lost_dnsperf"] = s["lost"]
    if "builtin" in opts.engines:
        res = run_load(LoadConfig(test_type="cache-hit", server=c.addr, duration=d, clients=20, processes=1,
                                  warmup=0.5, warm_set=opts.warm_set, prime=False, **over(c)))
        r["qps_builtin"] = res["qps"]
        r["builtin_generator_saturated"] = res["generator_saturated"]
        r["notes"] += res["warnings"]
        res = run_load(LoadConfig(test_type="cache-hit", server=c.addr, duration=d, clients=64, processes=1,
                                  qps=OFFERED_QPS, warmup=0.5, warm_set=opts.warm_set, prime=False, **over(c)))
        r["p50_us_builtin"] = res["latency_us"]["p50"]
        r["p99_us_builtin"] = res["latency_us"]["p99"]
        r["achieved_qps_builtin"] = res["qps"]
        r["timeouts_builtin_10k"] = res["timeouts"]
        r["machine_overloaded"] = res["machine_overloaded"]
        r["notes"] += res["warnings"]
    if "dnsperf" in opts.engines:
        out = work / "open.txt"
        s, cpu, wall = dnsperf_window(c, names, d, ["-c", "20", "-T", "1", "-Q", str(OFFERED_QPS)], out, verbose=True)
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
    if "dnsperf" in opts.engines and set(opts.workloads) & {"miss", "mixed"}:
        misses = measure_misses(c, opts, names, work, tag, upstream_pid)
        r["notes"] += misses.pop("notes", [])
        r.update(misses)
    if c.pid:
        r["rss_mb"] = round(tree_rss(c.pid) / 1e6, 2)
    if not r["notes"]:
        del r["notes"]
    return r


MISS_RATE_CEILING = 80_000  # misses per second no contestant reaches here: the name files never run out
MISS_WORKLOADS = {"miss": ("qps_miss", "cpu_us_per_miss"), "mixed": ("qps_mixed", "cpu_us_per_query_mixed")}


def measure_misses(c: Contestant, opts: CompareOptions, names: Path, work: Path, tag: str,
                   upstream_pid: int | None = None) -> dict:
    """Cache misses and the mixed 80/20 workload, every unique name asked once (dnsperf -n 1).

    Each (round, contestant) gets names no one asked before, so a later round
    cannot hit what an earlier one cached; the mixed file puts one such name
    after every four names of the warm set. The upstream's own CPU is read over
    each window: an upstream near a whole core, not the contestant, set the rate.
    """
    r: dict[str, Any] = {}
    count = int(opts.duration * MISS_RATE_CEILING)
    for workload, (qps_key, cpu_key) in MISS_WORKLOADS.items():
        if workload not in opts.workloads:
            continue
        path = work / f"{workload}-names.txt"
        if workload == "miss":
            miss_file(path, tag, count)
        else:
            mixed_file(path, tag, count, names)
        up0 = tree_cpu_seconds(upstream_pid) if upstream_pid else None
        s, cpu, wall = dnsperf_window(c, path, opts.duration, ["-c", "20", "-T", "1", "-n", "1"],
                                      work / f"{workload}.txt")
        path.unlink(missing_ok=True)
        r[qps_key] = s["qps"]
        r[f"lost_{workload}"] = s["lost"]
        if cpu is not None and s["completed"]:
            r[cpu_key] = round(cpu / s["completed"] * 1e6, 2)
        up1 = tree_cpu_seconds(upstream_pid) if upstream_pid else None
        if up0 is not None and up1 is not None and wall > 0:
            pct = 100.0 * (up1 - up0) / wall
            r[f"upstream_cpu_pct_{workload}"] = round(pct, 1)
            if pct > UPSTREAM_SATURATED_PCT:
                r.setdefault("notes", []).append(
                    f"{workload}: the upstream used {pct:.0f} % of a core: it may have set the rate")
    return r


UPSTREAM_SATURATED_PCT = 90.0


def miss_file(path: Path, tag: str, count: int) -> Path:
    path.write_text("".join(f"{i}.{tag}.miss.bench.test A\n" for i in range(count)))
    return path


def mixed_file(path: Path, tag: str, count: int, warm: Path) -> Path:
    hot = warm.read_text().splitlines()
    lines = []
    for i in range(count):
        lines.append(f"{i}.{tag}.mixed.bench.test A" if i % 5 == 4 else hot[i % len(hot)])
    path.write_text("\n".join(lines) + "\n")
    return path


def measure_concurrency(c: Contestant, clients: int, opts: CompareOptions) -> dict:
    """N closed-loop clients (one socket each) on the cache-hit set: loss = queries never answered."""
    from tools.loadgen import LoadConfig, run_load

    res = run_load(LoadConfig(test_type="cache-hit", server=c.addr, duration=min(opts.duration, 5.0),
                              clients=clients, warmup=0.5, warm_set=opts.warm_set, prime=False,
                              timeout_ms=2000, **over(c)))
    return {"clients": clients, "sent": res["sent"], "received": res["received"], "timeouts": res["timeouts"],
            "lost": res["sent"] - res["received"], "qps": res["qps"], "p99_us": res["latency_us"]["p99"],
            "processes": res["processes"], "warnings": res["warnings"]}


def measure_fill(c: Contestant, count: int, work: Path) -> dict:
    """Cache `count` unique names (one query each); RSS before/after and the growth per answered name."""
    assert c.pid is not None  # run.py fills only contestants that have a pid
    names = work / "fill.txt"
    if not names.exists():
        names.write_text("".join(f"fill{i}.bench.test A\n" for i in range(count)))
    rss0 = tree_rss(c.pid)
    s, _, wall = dnsperf_window(c, names, 3600, ["-n", "1", "-c", "20", "-T", "1", "-q", "200", "-t", "5"],
                          work / "fill-out.txt")
    time.sleep(0.5)
    rss1 = tree_rss(c.pid)
    done = s["completed"]
    return {"names": count, "answered": done, "seconds": round(wall, 1), "rss_before_mb": round(rss0 / 1e6, 1),
            "rss_after_mb": round(rss1 / 1e6, 1),
            "bytes_per_entry": round((rss1 - rss0) / done, 1) if done else None}
