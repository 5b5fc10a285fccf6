#!/usr/bin/env python3
"""Nanoseconds per hot-path call of the blocking/rate-limit/metrics/query-log modules.

Best of several timeit repeats (the least disturbed by other load), one line per call:

    .venv/bin/python scripts/bench_micro.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]

import dns.message  # noqa: E402

from gen_blocklist import name, write_blocklist  # noqa: E402
from heimdall.blocklist import load_blocklists, to_wire  # noqa: E402
from heimdall.blockresponse import BlockResponder  # noqa: E402
from heimdall.metrics import Stats  # noqa: E402
from heimdall.querylog import QueryLog  # noqa: E402
from heimdall.ratelimit import RateLimitConfig, RateLimiter  # noqa: E402


def ns(stmt: str, env: dict, number: int = 200_000) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=5)) / number * 1e9


def main() -> None:
    rows = []
    s = Stats()
    rows.append(("Stats.record(key, s, hit)", ns("r(k, 0.0001, True)", {"r": s.record, "k": ("udp", 1, 0)})))
    rows.append(("Stats.record_query(...)", ns("r('udp', 1, 0, 0.0001, True)", {"r": s.record_query})))
    rows.append(("stats.blocked += 1", ns("s.blocked += 1", {"s": s})))
    plain = RateLimiter(RateLimitConfig(per_ip_qps=1e9, per_ip_burst=1e9))
    agg = RateLimiter(RateLimitConfig(per_ip_qps=1e9, per_ip_burst=1e9, aggregate=True))
    rows.append(("RateLimiter.allow v4", ns("a('192.0.2.1', 1.0)", {"a": plain.allow})))
    rows.append(("RateLimiter.allow v4 /24", ns("a('192.0.2.1', 1.0)", {"a": agg.allow})))
    rows.append(("RateLimiter.allow v6 /56", ns("a('2001:db8::1', 1.0)", {"a": agg.allow})))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "b.txt")
        write_blocklist(path, 1_000_000)
        bl = load_blocklists([path])
        for q in (name(5), "www.example.com", "a.b.c.d.e.example.org"):
            rows.append((f"Blocklist.match 1M {q} ({bl.match(to_wire(q))})",
                         ns("m(w)", {"m": bl.match, "w": to_wire(q)})))
        write_blocklist(path, 10)
        small = load_blocklists([path])
        for q in ("www.example.com", "a.b.c.d.e.example.org"):
            rows.append((f"Blocklist.match 10 {q}", ns("m(w)", {"m": small.match, "w": to_wire(q)})))
        wire = dns.message.make_query("ads.example.com", "A").to_wire()
        r = BlockResponder("zero_ip")
        rows.append(("BlockResponder.respond zero_ip A+EDNS", ns("f(q)", {"f": r.respond, "q": wire})))
        ql = QueryLog(os.path.join(d, "q.log"), max_buffer=10**7)
        rows.append(("QueryLog.log (buffer only)",
                     ns("f('192.0.2.1', b'\\x03www\\x00', 1, 0, 0.0001)", {"f": ql.log}, 100_000)))
    for label, v in rows:
        print(f"{label:48} {v:8.0f} ns")


if __name__ == "__main__":
    main()
