#!/usr/bin/env python3
"""Server syscalls per answered query at saturation, A/B between Heimdall builds.

The C hot path sizes each recvmmsg from what the last one found (see adapt() in
heimdall/_hotpath.c); how well it guesses shows as syscalls per query when
datagrams queue. This counts every syscall the server process makes
(`perf stat -e raw_syscalls:sys_enter -p PID`) over a dnsperf window, for the
current tree and for each --variant (e.g. another checkout with
PYTHONPATH=/path), interleaved, order rotated each round; medians over rounds.
Throughput and server CPU per query come along, so a change that saves calls
but costs time shows.

    .venv/bin/python scripts/bench_syscalls.py --rounds 5 --duration 4 \\
        --variant prev:PYTHONPATH=/tmp/prevc --clients 20,100
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from tools.sidebyside.contestants import Contestant, parse_variant, start_contestant
from tools.sidebyside.options import CompareOptions
from tools.sidebyside.workloads import dnsperf_window, warm, warm_file
from tools.errors import ToolError
from tools.nsd import LocalUpstream


def contestants(variants: list[str], upstream: str) -> list[Contestant]:
    out = [start_contestant("heimdall", "heimdall", upstream, CompareOptions(), 1)]
    for spec in variants:
        name, env = parse_variant(spec)
        out.append(start_contestant("heimdall", name, upstream, CompareOptions(), 1, env))
    return out


def measure(c: Contestant, names: Path, seconds: float, clients: int, work: Path) -> dict:
    """One dnsperf window with perf counting the server's syscalls."""
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(c.pid)],
                            stderr=subprocess.PIPE, text=True)
    try:
        summary, cpu, _ = dnsperf_window(c, names, seconds, ["-c", str(clients), "-q", str(clients), "-T", "1"],
                                   work / f"{c.name}.txt")
    finally:
        perf.send_signal(2)
        err = perf.communicate(timeout=30)[1]
    m = re.search(r"^(\d+),,raw_syscalls:sys_enter", err, re.M)
    answered = summary["completed"] or 0
    return {"qps": summary["qps"],
            "syscalls_per_query": int(m.group(1)) / answered if m and answered else None,
            "cpu_us_per_query": 1e6 * cpu / answered if cpu and answered else None}


METRICS = (("qps", ",.0f", "q/s"), ("syscalls_per_query", ".3f", "syscalls/q"), ("cpu_us_per_query", ".2f", "us CPU/q"))


def _cell(rs: list[dict], ref: list[dict], key: str, fmt: str, unit: str) -> str:
    """Median over rounds, and the median of this round's value over the reference's."""
    med = statistics.median(x[key] for x in rs if x[key] is not None)
    ratios = [x[key] / y[key] for x, y in zip(rs, ref) if x[key] and y[key]]
    text = f"{med:{fmt}} {unit}"
    return f"{text} ({statistics.median(ratios):.2f}x)" if ratios else text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--clients", default="20", help="dnsperf outstanding queries, comma-separated")
    ap.add_argument("--variant", action="append", default=[], help="NAME:ENV=VALUE[,ENV=VALUE]")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="heimdall-syscalls-"))
    names = warm_file(work / "names.txt", 1000)
    with LocalUpstream() as up:
        cs = contestants(args.variant, up.addr)
        try:
            for c in cs:
                warm(c, names, work)
            for clients in (int(x) for x in args.clients.split(",")):
                rows: dict[str, list[dict]] = {c.name: [] for c in cs}
                for r in range(args.rounds):
                    for c in cs[r % len(cs):] + cs[:r % len(cs)]:
                        rows[c.name].append(measure(c, names, args.duration, clients, work))
                print(f"dnsperf -c {clients} -q {clients} -T 1, medians of {args.rounds} rounds "
                      f"(x: median of per-round ratios to {cs[0].name}):")
                for name, rs in rows.items():
                    print(f"  {name:12s} " + "  ".join(_cell(rs, rows[cs[0].name], *m) for m in METRICS))
        finally:
            for c in cs:
                c.server.stop()


if __name__ == "__main__":
    try:
        main()
    except ToolError as exc:  # a bad --variant: one line, not a traceback
        raise SystemExit(f"error: {exc}") from None
