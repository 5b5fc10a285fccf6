#!/usr/bin/env python3
"""How often the gate tells the truth here: checks of a target whose per-query cost is known.

Makes one baseline of tests/targets/busy_responder.py (started by the lab,
`--server ADDR -- COMMAND`, so instructions per query are counted too), then
runs `heimdall-tools check --max-regression 10` --runs times against each of
the unchanged target and the target --slower-pct slower per query, half of
the runs with `python3 -c 'while True: pass'` spinning beside the whole
check. Prints one Markdown row per (target, machine) with the exit statuses,
and per run the change of instructions per query and of CPU per query.

    .venv/bin/python scripts/bench_gate.py --runs 10 --slower-pct 15
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from targets.busy_responder import command  # noqa: E402

from tools.nsd import free_port  # noqa: E402

TOOL = [sys.executable, "-m", "tools.cli"]


def started(cost_us: float, slower_pct: float) -> list[str]:
    port = free_port()
    return ["--server", f"127.0.0.1:{port}", "--", *command(port, cost_us, slower_pct)]


def check(baseline: Path, results: Path, target: list[str], busy: bool) -> tuple[int, dict[str, float | None]]:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        proc = subprocess.run([*TOOL, "check", "--max-regression", "10", "--baseline", str(baseline),
                               "--results-dir", str(results), *target], capture_output=True, text=True, cwd=ROOT)
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
    runs = sorted(results.glob("*-check"))
    rows = json.loads((runs[-1] / "check.json").read_text())["rows"] if runs else []
    changes = {f"{r['scenario']}/{r['metric']}": r["change_pct"] for r in rows
               if r["metric"] in ("instructions_per_query", "cpu_us_per_query")}
    return proc.returncode, changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="checks per target (half of them beside a busy neighbour)")
    ap.add_argument("--slower-pct", type=float, default=15.0)
    ap.add_argument("--cost-us", type=float, default=50.0)
    ap.add_argument("--load", default="--scenarios cache-hit,cache-miss --duration 2 --warmup 0.5 --repeats 5 "
                                      "--probes none", help="baseline create options")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        base = Path(tmp) / "baseline.json"
        subprocess.run([*TOOL, "baseline", "create", "--output", str(base), *args.load.split(),
                        *started(args.cost_us, 0.0)], check=True, cwd=ROOT, capture_output=True)
        print("| target | machine | exit statuses | regression | inconclusive | pass |")
        print("|---|---|---|---|---|---|")
        details = []
        for label, pct in (("unchanged", 0.0), (f"{args.slower_pct:g} % slower", args.slower_pct)):
            for busy in (False, True):
                codes = []
                for i in range(args.runs // 2):
                    code, changes = check(base, Path(tmp) / f"{pct}-{busy}-{i}", started(args.cost_us, pct), busy)
                    codes.append(code)
                    details.append((label, "busy" if busy else "quiet", code, changes))
                print(f"| {label} | {'busy neighbour' if busy else 'quiet'} | {' '.join(map(str, codes))} | "
                      f"{codes.count(1)} | {codes.count(2)} | {codes.count(0)} |", flush=True)
        print()
        for label, machine, code, changes in details:
            shown = ", ".join(f"{k} {v:+.2f}%" for k, v in sorted(changes.items()) if v is not None)
            print(f"{label:>12} {machine:>5} exit {code}: {shown}")


if __name__ == "__main__":
    main()
