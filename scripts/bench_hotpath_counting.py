#!/usr/bin/env python3
"""CPU per UDP cache hit in the real fast path, with and without the per-query counting.

Drives `DnsServer._udp_readable` in-process (no event loop, no load
generator): a client socket sends a batch of 64 queries for cached names, the
server reads and answers them in one call, the client drains the replies.
Only the server call is timed (`time.thread_time`, CPU of this thread), so
noise from other processes on a busy machine mostly cancels. Variants run in
subprocesses, interleaved, medians of the repeats:

* `off`: this checkout, metrics hooks not installed (HEIMDALL_HTTP_BIND_ADDR=disabled);
  the per-label hit count (`hit_labels[e.lid] += 1`) is always on.
* `on`: this checkout with the hooks that `features.py` installs (time_hits per batch).
* `before`: another checkout (`--baseline-root`, e.g. `git archive <commit before the wiring>`).

    .venv/bin/python scripts/bench_hotpath_counting.py --baseline-root /tmp/base --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import socket, sys, time
import dns.message, dns.rrset
from heimdall.config import load_config
from heimdall.server import DnsServer, bind_sockets
from heimdall import wire
from heimdall.cache import build_entry
variant, rounds, batched = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
cfg = load_config([], {"HEIMDALL_UPSTREAM_SERVERS": "127.0.0.1:9", "HEIMDALL_UDP_BATCH": "off"})
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0)); udp.setblocking(False)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0))
srv = DnsServer(cfg, udp, tcp)
read = srv._udp_readable
if batched:  # recvmmsg/sendmmsg, as at saturation
    from heimdall import udpbatch
    srv._batch = udpbatch.BatchSocket(udp, 64)
    srv._batch_auto = False
    read = srv._udp_readable_batched
if variant == "on":
    from heimdall import metrics
    m = metrics.Stats()
    srv.time_hits = m.observe_hits
now = int(time.monotonic())
queries = []
for i in range(64):
    q = dns.message.make_query(f"n{i}.bench.test", "A", use_edns=False)
    data = q.to_wire()
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.1"))
    pq = wire.parse_query(data)
    entry, ttl = build_entry(r.to_wire(), data, pq, 512, now, 0, 86400, 3600)
    srv.cache.put(wire.cache_key(data, pq, False), entry)
    queries.append(data)
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); cli.bind(("127.0.0.1", 0))
cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
dst = udp.getsockname()
spent = 0.0
answered = 0
for _ in range(rounds):
    for d in queries:
        cli.sendto(d, dst)
    srv._limit = 64
    t0 = time.thread_time()
    read()
    spent += time.thread_time() - t0
    cli.settimeout(1)
    for _ in range(64):
        cli.recv(512)
        answered += 1
assert srv.stats.hits_fast == answered, (srv.stats.hits_fast, answered)
print(spent / answered * 1e6)
'''


def run(variant: str, root: str, rounds: int, batched: bool) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(rounds), "1" if batched else "0"], cwd=root,
                         capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": root})
    if out.returncode:
        raise SystemExit(out.stderr)
    return float(out.stdout.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rounds", type=int, default=2000, help="batches of 64 per run")
    p.add_argument("--baseline-root")
    p.add_argument("--batched", action="store_true", help="recvmmsg/sendmmsg path (_udp_readable_batched)")
    a = p.parse_args()
    variants = [("off", ROOT), ("on", ROOT)] + ([("before", a.baseline_root)] if a.baseline_root else [])
    res: dict[str, list[float]] = {v: [] for v, _ in variants}
    for r in range(a.repeats):
        for v, root in variants:
            res[v].append(run(v, root, a.rounds, a.batched))
        print(f"repeat {r + 1}: " + ", ".join(f"{v} {res[v][-1]:.3f}" for v, _ in variants), flush=True)
    med = {v: statistics.median(x) for v, x in res.items()}
    print("median us CPU per fast-path hit (server call only): " + ", ".join(f"{v} {m:.3f}" for v, m in med.items()))
    low = {v: min(x) for v, x in res.items()}
    print("min us CPU per fast-path hit: " + ", ".join(f"{v} {m:.3f}" for v, m in low.items()))
    print(f"on / off: {med['on'] / med['off']:.3f} (medians), {low['on'] / low['off']:.3f} (minima)")
    if "before" in med:
        print(f"on / before: {med['on'] / med['before']:.3f}, off / before: {med['off'] / med['before']:.3f} "
              f"(medians); {low['on'] / low['before']:.3f}, {low['off'] / low['before']:.3f} (minima)")


if __name__ == "__main__":
    main()
