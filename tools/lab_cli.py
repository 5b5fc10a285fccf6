"""CLI commands of the lab's main job: bench, baseline create, check.

Thin typer wrappers: options become a LabOptions, the work is in bench.py
and check.py, errors are ToolErrors (one line, documented exit status).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

SCEN_HELP = "comma list of cache-hit,cache-miss,mixed,high-concurrency,blocking, or all"
SERVER_HELP = "measure this server (HOST:PORT) instead of starting Heimdall + NSD; needs --pid"
PID_HELP = "the --server's process id (CPU time, resources and probes attach to it)"
PROBES_HELP = "probe set: comma list of lockprof,memprof,netprof, or all, or none"

baseline_app = typer.Typer(help="Create a JSON baseline for `check`.", no_args_is_help=True)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C or SIGTERM unwinds normally (probes detach, started servers stop), then one line, exit 3."""
    from tools.errors import EXIT_ENVIRONMENT, ToolError

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        raise ToolError("interrupted: probes detached and started servers stopped; finished windows are kept",
                        EXIT_ENVIRONMENT) from None
    finally:
        signal.signal(signal.SIGTERM, old)


def bench(
    scenarios: str = typer.Option("all", "--scenarios", help=SCEN_HELP),
    duration: float = typer.Option(30.0, "--duration", help="measured seconds per scenario"),
    warmup: float = typer.Option(2.0, "--warmup", help="unmeasured seconds before each window"),
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent clients (default 20; high-concurrency 200+)"),
    repeats: int = typer.Option(1, "--repeats", help="windows per scenario, interleaved"),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    cpuprof: bool = typer.Option(False, "--cpuprof", "--profile", help="py-spy flame graph of each scenario's window"),
    memprof: bool = typer.Option(False, "--memprof", "--memory-profile", help="malloc probe (libc uprobes)"),
    lockprof: bool = typer.Option(False, "--lockprof", "--lock-profile", help="futex probe"),
    netprof: bool = typer.Option(False, "--netprof", "--net-profile", help="UDP receive-queue / syscall probe"),
    all_profiles: bool = typer.Option(False, "--all-profiles", help="all of the above"),
    engine: str = typer.Option("builtin", "--engine", help="load engine: builtin or dnsperf"),
    timeout_ms: int = typer.Option(2000, "--timeout-ms", help="per-query timeout"),
    results_dir: Path = typer.Option(Path("performance_results"), "--results-dir", help="parent of the run's timestamped directory"),
) -> None:
    """Run the five load scenarios with the chosen probes; write JSON, resource_usage.csv and performance_report.md."""
    from tools.measure import LabOptions, parse_scenarios, run_bench

    probes = [name for name, on in (("lockprof", lockprof), ("memprof", memprof), ("netprof", netprof))
              if on or all_profiles]
    opts = LabOptions(scenarios=parse_scenarios(scenarios), duration=duration, warmup=warmup, clients=clients,
                      repeats=repeats, server=server, pid=pid, probes=probes, flame=cpuprof or all_profiles,
                      engine=engine, timeout_ms=timeout_ms, results_dir=results_dir)
    with _interruptible():
        out = run_bench(opts, say=_say)
    print(f"report: {out / 'performance_report.md'}")


def _lab_options(scenarios, duration, warmup, clients, repeats, server, pid, probes, engine, timeout_ms, results_dir):
    from tools.measure import LabOptions, parse_scenarios
    from tools.lab_adapter import parse_probe_names

    opts = LabOptions(duration=5.0, warmup=1.0, repeats=5, server=server, pid=pid,
                      results_dir=results_dir, probes=parse_probe_names(probes or "none"))
    given = set()
    for name, value in (("scenarios", scenarios), ("duration", duration), ("warmup", warmup), ("clients", clients),
                        ("repeats", repeats), ("engine", engine), ("timeout_ms", timeout_ms), ("probes", probes)):
        if value is not None:
            given.add(name)
            if name == "scenarios":
                opts.scenarios = parse_scenarios(value)
            elif name != "probes":
                setattr(opts, name, value)
    return opts, given


@baseline_app.command("create")
def baseline_create(
    output: Optional[Path] = typer.Option(None, "--output", help="baseline file (default baselines/<machine kind>.json)"),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help=SCEN_HELP),
    duration: Optional[float] = typer.Option(None, "--duration", help="seconds per window (default 5)"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="unmeasured seconds before each window (default 1)"),
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent clients (default 20)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="windows per scenario (default 5)"),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    probes: Optional[str] = typer.Option(None, "--probes", help=PROBES_HELP + " (default all)"),
    engine: Optional[str] = typer.Option(None, "--engine", help="load engine: builtin or dnsperf"),
    timeout_ms: Optional[int] = typer.Option(None, "--timeout-ms", help="per-query timeout (default 2000)"),
) -> None:
    """Measure repeated windows and write a versioned JSON baseline (atomically)."""
    from tools.gate import create_baseline, default_baseline_path

    opts, _ = _lab_options(scenarios, duration, warmup, clients, repeats, server, pid, probes or "all",
                           engine, timeout_ms, Path("performance_results"))
    with _interruptible():
        create_baseline(opts, output or default_baseline_path(), say=_say)


def check(
    max_regression: float = typer.Option(..., "--max-regression", help="allowed worsening of a median, percent"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="baseline file (default baselines/<machine kind>.json)"),
    count_threshold: float = typer.Option(3.0, "--count-threshold", help="allowed worsening of per-query counts, percent"),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help=SCEN_HELP + " (default: the baseline's)"),
    duration: Optional[float] = typer.Option(None, "--duration", help="seconds per window (default: the baseline's)"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="(default: the baseline's)"),
    clients: Optional[int] = typer.Option(None, "--clients", help="(default: the baseline's)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="windows per scenario (default: the baseline's)"),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    probes: Optional[str] = typer.Option(None, "--probes", help=PROBES_HELP + " (default: the baseline's)"),
    engine: Optional[str] = typer.Option(None, "--engine", help="(default: the baseline's)"),
    timeout_ms: Optional[int] = typer.Option(None, "--timeout-ms", help="(default: the baseline's)"),
    results_dir: Path = typer.Option(Path("performance_results"), "--results-dir", help="where the run and its reports go"),
) -> None:
    """Compare repeated windows with a baseline: exit 0 pass, 1 regression, 2 inconclusive, 3 environment/input error."""
    from tools.gate import default_baseline_path, run_check
    from tools.errors import EXIT_ENVIRONMENT, ToolError
    from tools.verdict import Thresholds

    if not max_regression > 0 or not count_threshold > 0:
        raise ToolError("--max-regression and --count-threshold must be > 0", EXIT_ENVIRONMENT)
    opts, given = _lab_options(scenarios, duration, warmup, clients, repeats, server, pid, probes,
                               engine, timeout_ms, results_dir)
    th = Thresholds(max_regression_pct=max_regression, count_pct=count_threshold)
    with _interruptible():
        result = run_check(opts, baseline or default_baseline_path(), th, given, say=_say)
    print_check(result)
    raise typer.Exit(result.exit_code)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.4g}"


def print_check(result) -> None:
    from rich.console import Console
    from rich.table import Table

    out, err = Console(width=max(Console().width, 124)), Console(stderr=True, soft_wrap=True)
    if result.fingerprint_warnings:
        err.print("[bold yellow]WARNING: this machine differs from the baseline's: "
                  + "; ".join(result.fingerprint_warnings) + " -- figures may not be comparable[/]", highlight=False)
    table = Table(title="check against baseline ((info) rows are shown but do not set the exit status)")
    for col in ("scenario", "metric", "unit", "baseline", "current", "change", "verdict"):
        table.add_column(col, justify="right" if col in ("baseline", "current", "change") else "left",
                         no_wrap=col != "unit")
    colour = {"regression": "bold red", "worse": "magenta", "inconclusive": "yellow", "improved": "green", "ok": ""}
    for r in result.rows:
        change = "n/a" if r.change_pct is None else f"{r.change_pct:+.1f}%"
        verdict = f"[{colour[r.verdict]}]{r.verdict}[/]" if colour[r.verdict] else r.verdict
        table.add_row(r.scenario, r.metric + ("" if r.gate else " (info)"), r.unit, _num(r.baseline),
                      _num(r.current), change, verdict)
    out.print(table)
    for r in result.rows:
        if r.verdict in ("regression", "worse") or (r.verdict == "inconclusive" and r.gate):
            out.print(f"  {r.scenario}/{r.metric}: {r.verdict}: {r.reason}", highlight=False, soft_wrap=True)
    out.print(f"{result.reason} (exit {result.exit_code})", highlight=False, soft_wrap=True)
    if result.results_dir:
        out.print(f"report: {result.results_dir / 'performance_report.md'} "
                  f"(verdicts: {result.results_dir / 'check_report.md'})", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add bench, baseline and check to the heimdall-tools app."""
    app.command("bench")(bench)
    app.add_typer(baseline_app, name="baseline")
    app.command("check")(check)
