#!/usr/bin/env python3
"""What the blocking/rate-limit/metrics modules cost a cache-hit hot path.

Starts a minimal uvloop UDP responder (the server's fast-path shape: key =
``data[2:].lower()``, one dict lookup, ID + stored reply, ``sendto``) in a
subprocess per variant, floods it with dnsperf over 1,000 cached names, and
prints per variant the server's CPU time per answered query (user+sys from
psutil, the figure that stays meaningful on a busy shared machine) and
queries/s at a fixed offered rate, as medians of interleaved repeats, with
ratios to the bare responder. Variants add, per query: ``Stats.record`` with two
``perf_counter`` calls (metrics), ``RateLimiter.allow`` (ratelimit), a
``Blocklist.match`` against a 1,000,000-name list (blocklist), all three.

    .venv/bin/python scripts/bench_features.py --seconds 5 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("bare", "metrics", "ratelimit", "blocklist", "all")

SERVER = r'''
import asyncio, sys, time, uvloop
sys.path.insert(0, sys.argv[4])
import dns.message
from gen_blocklist import name as blocked_name
variant, port, listfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from heimdall.metrics import Stats
from heimdall.ratelimit import RateLimiter, RateLimitConfig
from heimdall.blocklist import load_blocklists
use_m = variant in ("metrics", "all"); use_r = variant in ("ratelimit", "all"); use_b = variant in ("blocklist", "all")
bl = load_blocklists([listfile]) if use_b else None
rl = RateLimiter(RateLimitConfig(per_ip_qps=1e9, per_ip_burst=1e9))
stats = Stats()
cache = {}
for i in range(1000):
    q = dns.message.make_query(f"n{i}.bench.test", "A", use_edns=False)
    r = dns.message.make_response(q); r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.1"))
    cache[q.to_wire()[2:].lower()] = r.to_wire()[2:]
KEY = ("udp", 1, 0)
class P(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr):
        if use_m: t0 = time.perf_counter()
        if use_r and not rl.allow(addr[0], t0 if use_m else time.monotonic()): return
        if use_b and bl.match(data[12:-4].lower()): return
        e = cache.get(data[2:].lower())
        if e is not None:
            self.t.sendto(data[:2] + e, addr)
            if use_m: stats.record(KEY, time.perf_counter() - t0, True)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", port))
    print("ready", flush=True)
    await asyncio.sleep(3600)
uvloop.run(main())
'''


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(variant: str, listfile: str, qfile: str, seconds: int, rate: int) -> tuple[float, float]:
    """(queries/s, server CPU microseconds per answered query)."""
    import psutil
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-c", SERVER, variant, str(port), listfile,
                            os.path.join(ROOT, "scripts")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert srv.stdout.readline().strip() == "ready"
        proc = psutil.Process(srv.pid)
        c0 = proc.cpu_times()
        out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(seconds),
                              "-c", "20", "-T", "1", "-q", "200", "-Q", str(rate)], capture_output=True,
                             text=True, timeout=seconds + 30).stdout
        c1 = proc.cpu_times()
        qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
        done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
        cpu = (c1.user + c1.system - c0.user - c0.system) / max(done, 1) * 1e6
        return qps, cpu
    finally:
        srv.kill()
        srv.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rate", type=int, default=10000, help="offered queries/s (dnsperf -Q)")
    a = p.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from gen_blocklist import write_blocklist
    with tempfile.TemporaryDirectory() as d:
        listfile, qfile = os.path.join(d, "block.txt"), os.path.join(d, "queries.txt")
        write_blocklist(listfile, 1_000_000)
        with open(qfile, "w") as f:
            f.writelines(f"n{i}.bench.test A\n" for i in range(1000))
        variants = a.variants.split(",")
        qps: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(a.repeats):
            for v in variants:
                q, c = run_one(v, listfile, qfile, a.seconds, a.rate)
                qps[v].append(q)
                cpu[v].append(c)
                print(f"repeat {r + 1} {v:10} {q:9.0f} q/s {c:7.2f} us CPU/query", flush=True)
        base = statistics.median(cpu["bare"]) if "bare" in cpu else float("nan")
        print(f"\n{'variant':10} {'q/s':>9} {'us CPU/q':>9} {'CPU ratio':>9}")
        for v in variants:
            c = statistics.median(cpu[v])
            print(f"{v:10} {statistics.median(qps[v]):9.0f} {c:9.2f} {c / base:9.3f}")


if __name__ == "__main__":
    main()
