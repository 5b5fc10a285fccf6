#!/usr/bin/env python3
"""Blocking's performance figures for the real `heimdall serve`: startup, blocked vs cached, counting cost.

1. Startup with a 1,000,000-domain blocklist (scripts/gen_blocklist.py):
   seconds from exec to "listening on" and the process's RSS then.
2. Blocking scenario vs cache hits without lists: dnsperf -c 20 -T 1 -l 5
   against (a) a server with the 1M list answering a query file that is half
   blocked names, half cached names, and (b) a server without lists answering
   cached names only. Runs alternate a, b, a, b, ...; medians are compared.
3. Counting cost: cache hits with metrics on (HTTP API enabled, the default)
   vs off (HEIMDALL_HTTP_BIND_ADDR=disabled), no lists, alternating.

    .venv/bin/python scripts/bench_blocking.py --repeats 3 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from gen_blocklist import name as blocked_name, write_blocklist  # noqa: E402

from tools.nsd import LocalUpstream, free_port  # noqa: E402

NAMES = 1000


def start(upstream: str, env: dict[str, str], root: str = ROOT) -> tuple[subprocess.Popen, int, float, int]:
    """(process, port, seconds to "listening on", RSS bytes then)."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    full.update({"HEIMDALL_BIND_ADDR": f"127.0.0.1:{port}", "HEIMDALL_UPSTREAM_SERVERS": upstream,
                 "HEIMDALL_HTTP_BIND_ADDR": "disabled"})
    full.update(env)
    if root != ROOT:  # an older checkout may not know "disabled" (its default was off)
        full.pop("HEIMDALL_HTTP_BIND_ADDR", None)
    log = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "heimdall", "serve"], env=full, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=log)
    while True:
        log.seek(0)
        text = log.read().decode(errors="replace")
        if "listening on" in text:
            break
        if proc.poll() is not None or time.monotonic() - t0 > 60:
            proc.kill()
            raise SystemExit(f"server did not start:\n{text}")
        time.sleep(0.01)
    ready = time.monotonic() - t0
    return proc, port, ready, psutil.Process(proc.pid).memory_info().rss


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dnsperf(port: int, qfile: str, seconds: int, pid: int, rate: int = 0) -> tuple[float, float]:
    """(queries/s, server CPU microseconds per completed query: user+sys over the run)."""
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-c", "20", "-T", "1",
                          "-l", str(seconds)] + (["-Q", str(rate)] if rate else []),
                         capture_output=True, text=True).stdout
    after = proc.cpu_times()
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    if not m or not done:
        raise SystemExit(f"dnsperf output not understood:\n{out}")
    cpu = (after.user + after.system) - (before.user + before.system)
    return float(m.group(1)), cpu / max(1, int(done.group(1))) * 1e6


def prime(port: int, qfile: str) -> None:
    """Every name asked once (misses fill the cache), twice to be sure."""
    with open(qfile) as f:
        lines = [ln.split() for ln in f if ln.strip()]
    import dns.message
    import dns.query
    for _ in range(2):
        for name, qtype in lines:
            try:
                dns.query.udp(dns.message.make_query(name, qtype, use_edns=False), "127.0.0.1", port=port, timeout=2)
            except Exception:  # noqa: BLE001
                pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--domains", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=0,
                   help="offered q/s (dnsperf -Q): CPU per query below saturation, steadier on a busy machine")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--baseline-root", help="a checkout without the blocking and counting wiring (e.g. `git archive 449f854`): "
                   "adds a cache-hit variant served from it, to price the always-on per-label hit count")
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="heimdall-bench3-")
    try:
        measure(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(a: argparse.Namespace, work: str) -> None:
    listfile = os.path.join(work, "block.txt")
    write_blocklist(listfile, a.domains)
    hits = os.path.join(work, "hits.txt")
    mixed = os.path.join(work, "mixed.txt")
    with open(hits, "w") as f:
        f.writelines(f"h{i}.bench.test A\n" for i in range(NAMES))
    with open(mixed, "w") as f:  # half blocked (spread over the whole list), half cached
        for i in range(NAMES):
            f.write(f"{blocked_name(i * (a.domains // NAMES))} A\n" if i % 2 else f"h{i}.bench.test A\n")
    lists = {"HEIMDALL_BLOCKLISTS": listfile}
    with LocalUpstream() as up:
        # 1. startup
        if not a.skip_startup:
            proc, port, ready, rss = start(up.addr, lists)
            cpu0 = psutil.Process(proc.pid).cpu_times()
            print(f"startup with {a.domains:,} domains: ready in {ready:.2f} s "
                  f"({cpu0.user + cpu0.system:.2f} s CPU), RSS {rss / 2**20:.0f} MB", flush=True)
            stop(proc)
        # 2. + 3. alternating throughput
        variants = {
            "blocking (1M list, half blocked)": (lists, mixed),
            "cache hits, no lists": ({}, hits),
            "cache hits, no lists, metrics on": ({"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{free_port()}"}, hits),
        }
        if a.baseline_root:
            variants["cache hits, before wiring"] = ({}, hits)
        results: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(a.repeats):
            for label, (env, qfile) in variants.items():
                root = a.baseline_root if label == "cache hits, before wiring" else ROOT
                proc, port, _, _ = start(up.addr, env, root)
                try:
                    prime(port, qfile)
                    qps, us = dnsperf(port, qfile, a.seconds, proc.pid, a.rate)
                finally:
                    stop(proc)
                results[label].append(qps)
                cpu[label].append(us)
                print(f"  repeat {r + 1}: {label}: {qps:,.0f} q/s, {us:.2f} us CPU/query", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    for k, v in med.items():
        print(f"median {k}: {v:,.0f} q/s  (runs: {', '.join(f'{x:,.0f}' for x in results[k])}); "
              f"{mcpu[k]:.2f} us CPU/query (runs: {', '.join(f'{x:.2f}' for x in cpu[k])})")
    base = med["cache hits, no lists"]
    cbase = mcpu["cache hits, no lists"]
    print(f"CPU/query ratios (lower is cheaper): blocking {mcpu['blocking (1M list, half blocked)'] / cbase:.3f}, "
          f"metrics on {mcpu['cache hits, no lists, metrics on'] / cbase:.3f}"
          + (f", before wiring {mcpu['cache hits, before wiring'] / cbase:.3f}" if a.baseline_root else ""))
    print(f"blocking / cache-hit ratio: {med['blocking (1M list, half blocked)'] / base:.3f} (target >= 0.9)")
    print(f"metrics on / off ratio: {med['cache hits, no lists, metrics on'] / base:.3f} (target >= 0.95)")
    if a.baseline_root:
        before = med["cache hits, before wiring"]
        print(f"metrics on / before wiring ratio: {med['cache hits, no lists, metrics on'] / before:.3f}")
        print(f"metrics off / before wiring ratio: {base / before:.3f}")


if __name__ == "__main__":
    main()
