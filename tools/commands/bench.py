"""`heimdall-tools bench`: the five scenarios with the chosen probes, written to a results directory.

A thin typer wrapper: the options become a LabOptions, the work is in
tools/measure.py, errors are ToolErrors (one line, documented exit status).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tools.commands.options import SCEN_HELP, SERVER_HELP, SERVER_PID_HELP, interruptible, say


def bench(
    scenarios: str = typer.Option("all", "--scenarios", help=SCEN_HELP),
    duration: float = typer.Option(30.0, "--duration", help="measured seconds per scenario"),
    warmup: float = typer.Option(2.0, "--warmup", help="unmeasured seconds before each window"),
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent clients (default 20; high-concurrency 200+)"),
    repeats: int = typer.Option(1, "--repeats", help="windows per scenario, interleaved"),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    pid: Optional[int] = typer.Option(None, "--pid", help=SERVER_PID_HELP),
    cpuprof: bool = typer.Option(False, "--cpuprof", "--profile", help="py-spy flame graph of each scenario's window"),
    memprof: bool = typer.Option(False, "--memprof", "--memory-profile", help="malloc probe (libc uprobes)"),
    lockprof: bool = typer.Option(False, "--lockprof", "--lock-profile", help="futex probe"),
    netprof: bool = typer.Option(False, "--netprof", "--net-profile", help="UDP receive-queue / syscall probe"),
    all_profiles: bool = typer.Option(False, "--all-profiles", help="all of the above"),
    engine: str = typer.Option("builtin", "--engine", help="load engine: builtin or dnsperf"),
    timeout_ms: int = typer.Option(2000, "--timeout-ms", help="per-query timeout"),
    results_dir: Path = typer.Option(Path("performance_results"), "--results-dir", help="parent of the run's <UTC stamp>-bench directory"),
    cache_fill: int = typer.Option(5000, "--cache-fill", help="after the windows, RSS per cached entry at N and 2N new names (0: off)"),
    capacity: bool = typer.Option(False, "--capacity", help="then ramp each scenario's open-loop rate to its capacity (~1 min each)"),
) -> None:
    """Run the five load scenarios with the chosen probes; write JSON, resource_usage.csv and performance_report.md."""
    from tools.errors import EXIT_USAGE, ToolError
    from tools.measure import LabOptions, parse_scenarios, run_bench

    if cache_fill < 0:
        raise ToolError(f"--cache-fill must be >= 0 (got {cache_fill})", EXIT_USAGE)

    probes = [name for name, on in (("lockprof", lockprof), ("memprof", memprof), ("netprof", netprof))
              if on or all_profiles]
    opts = LabOptions(scenarios=parse_scenarios(scenarios), duration=duration, warmup=warmup, clients=clients,
                      repeats=repeats, server=server, pid=pid, probes=probes, flame=cpuprof or all_profiles,
                      engine=engine, timeout_ms=timeout_ms, results_dir=results_dir, cache_fill=cache_fill,
                      capacity=capacity)
    with interruptible():
        out = run_bench(opts, say=say)
    print(f"report: {out / 'performance_report.md'}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
