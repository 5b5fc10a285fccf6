#!/usr/bin/env python3
"""The share of queries answered from the cache with and without HEIMDALL_PREFETCH.

The `zipf` load scenario (tools/scenarios.py: a fixed popularity order, the
k-th name asked in proportion to 1/k) at a fixed offered rate against
Heimdall with every TTL capped (HEIMDALL_MAX_TTL), so that entries expire
during the run; the same NSD upstream for every run. Prefetch on and off are
interleaved; each run's hit ratio is read from the server's /stats (cache
hits over lookups) and printed with the median per variant.

    .venv/bin/python scripts/bench_prefetch.py --seconds 40 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.nsd import LocalUpstream, free_port  # noqa: E402


def free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(prefetch: bool, upstream: str, args: argparse.Namespace) -> dict:
    port, http = free_port(), free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env.update(HEIMDALL_BIND_ADDR=f"127.0.0.1:{port}", HEIMDALL_HTTP_BIND_ADDR=f"127.0.0.1:{http}",
               HEIMDALL_UPSTREAM_SERVERS=upstream, HEIMDALL_MAX_TTL=str(args.ttl),
               HEIMDALL_PREFETCH="true" if prefetch else "false")
    server = subprocess.Popen([sys.executable, "-m", "heimdall", "serve"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        subprocess.run([sys.executable, "-m", "tools.cli", "load", "--server", f"127.0.0.1:{port}",
                        "--test-type", "zipf", "--warm-set", str(args.names), "--qps", str(args.qps),
                        "--duration", str(args.seconds), "--warmup", "0"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        time.sleep(1.5)  # the figures are published about once a second
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/stats", timeout=5) as r:
            stats = json.load(r)
    finally:
        server.terminate()
        server.wait(15)
    cache = stats["cache"]
    return {"hit_ratio": cache["hit_ratio"], "misses": cache["misses"],
            "prefetches": stats["counters"].get("prefetches", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--qps", type=float, default=2000)
    ap.add_argument("--names", type=int, default=20000, help="names in the popularity order")
    ap.add_argument("--ttl", type=int, default=20, help="HEIMDALL_MAX_TTL: every answer lives this long")
    args = ap.parse_args()
    results: dict[bool, list[dict]] = {True: [], False: []}
    with LocalUpstream() as up:
        for i in range(args.repeats):
            for prefetch in (False, True) if i % 2 == 0 else (True, False):
                r = run(prefetch, up.addr, args)
                results[prefetch].append(r)
                print(f"round {i + 1} prefetch={'on ' if prefetch else 'off'}: hit ratio {r['hit_ratio']:.4f}, "
                      f"{r['misses']} misses, {r['prefetches']} prefetches", flush=True)
    for prefetch in (False, True):
        ratios = [r["hit_ratio"] for r in results[prefetch]]
        print(f"prefetch {'on ' if prefetch else 'off'}: median hit ratio {statistics.median(ratios):.4f} "
              f"(of {', '.join(f'{x:.4f}' for x in ratios)})")


if __name__ == "__main__":
    main()
