#!/usr/bin/env python3
"""Server CPU per query at a fixed offered rate, split into user and kernel time.

`heimdall-tools compare` gives CPU per 10,000 q/s as one figure; this splits it
(psutil user vs system time of the server process over each dnsperf -Q window),
which is what shows whether a change to the hot path can still pay: kernel time
(wakeups, the loopback send) is the floor every server shares. Contestants run
interleaved, order rotated each round; medians over rounds.

    .venv/bin/python scripts/bench_cpu10k.py --rounds 5 --duration 4 \\
        --variant python:HEIMDALL_HOT_PATH=python --peers unbound --bare
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import psutil

from tools.dnsperf import dnsperf_binary, parse_summary
from tools.sidebyside.contestants import BareResponder, Contestant, parse_variant, start_contestant
from tools.sidebyside.options import CompareOptions
from tools.sidebyside.workloads import warm, warm_file
from tools.errors import ToolError
from tools.nsd import LocalUpstream


def contestants(args: argparse.Namespace, upstream: str) -> list[Contestant]:
    out = [start_contestant("heimdall", "heimdall", upstream, CompareOptions(), 1)]
    for spec in args.variant:
        name, env = parse_variant(spec)
        out.append(start_contestant("heimdall", name, upstream, CompareOptions(), 1, env))
    for peer in filter(None, args.peers.split(",")):
        out.append(start_contestant(peer, peer, upstream, CompareOptions(), 1))
    if args.bare:
        b = BareResponder().start()
        out.append(Contestant("bare-uvloop", "bare", b.addr, b.pid, 1, server=b))
    return out


def one_window(c: Contestant, names: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    """(user us/q, system us/q, answered q/s) over one dnsperf -Q window."""
    proc = psutil.Process(c.pid)
    before = proc.cpu_times()
    cmd = [dnsperf_binary(), "-s", c.sockaddr[0], "-p", str(c.sockaddr[1]), "-d", str(names),
           "-l", f"{args.duration:g}", "-c", "20", "-T", "1", "-Q", str(args.qps)]
    summary = parse_summary(subprocess.run(cmd, capture_output=True, text=True).stdout)
    after = proc.cpu_times()
    answered = summary["qps"] * (summary["run_time"] or args.duration)
    if answered <= 0:
        raise SystemExit(f"{c.name}: dnsperf got no answers")
    return ((after.user - before.user) / answered * 1e6, (after.system - before.system) / answered * 1e6,
            summary["qps"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per window")
    p.add_argument("--qps", type=int, default=10_000, help="offered rate (dnsperf -Q)")
    p.add_argument("--peers", default="unbound", help="comma list of unbound,dnsmasq ('' for none)")
    p.add_argument("--bare", action="store_true", help="add the bare uvloop echo responder")
    p.add_argument("--variant", action="append", default=[], help="NAME:HEIMDALL_X=Y[,...] (repeatable)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="heimdall-cpu10k-"))
    with LocalUpstream() as up:
        cs = contestants(args, up.addr)
        try:
            names = warm_file(work / "names.txt", 1000)
            for c in cs:
                warm(c, names, work)
            results: dict[str, list[tuple[float, float, float]]] = {c.name: [] for c in cs}
            for r in range(args.rounds):
                for c in cs[r % len(cs):] + cs[:r % len(cs)]:
                    u, k, q = one_window(c, names, args)
                    results[c.name].append((u, k, q))
                    print(f"round {r + 1}/{args.rounds} {c.name:16s} user {u:6.2f}  system {k:6.2f}  "
                          f"total {u + k:6.2f} us/query  ({q:,.0f} q/s)", flush=True)
        finally:
            for c in cs:
                c.server.stop()
    print(f"\nmedians over {args.rounds} rounds, us of server CPU per query at {args.qps:,} q/s offered:")
    print(f"{'server':16s} {'user':>7s} {'system':>7s} {'total':>7s}  (= % of a core at 10k q/s)")
    for name, rows in results.items():
        u = statistics.median(x[0] for x in rows)
        k = statistics.median(x[1] for x in rows)
        t = statistics.median(x[0] + x[1] for x in rows)
        print(f"{name:16s} {u:7.2f} {k:7.2f} {t:7.2f}")


if __name__ == "__main__":
    try:
        main()
    except ToolError as exc:  # a bad --variant: one line, not a traceback
        raise SystemExit(f"error: {exc}") from None
