"""`heimdall-tools check --max-regression`: repeated windows judged against a baseline.

Exit 0 pass, 1 regression, 2 inconclusive, 3 environment or input error; the
work is in tools/gate.py, this module parses the options and prints the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tools.commands.options import (
    INSTR_HELP,
    PROBES_HELP,
    SCEN_HELP,
    SERVER_CMD_HELP,
    SERVER_HELP,
    SERVER_PID_HELP,
    interruptible,
    lab_options,
    say,
)


def check(
    max_regression: float = typer.Option(..., "--max-regression", help="allowed worsening of a median, percent"),
    against: Optional[str] = typer.Option(
        None, "--against", metavar="REF",
        help="judge this tree against a git commit (origin/main, HEAD~1, a hash) built beside it and "
             "measured in the same run, window by window, instead of against the baseline's figures "
             "(the baseline then only gives the load and the probe set)"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="baseline file (default baselines/<machine kind>.json)"),
    count_threshold: float = typer.Option(3.0, "--count-threshold", help="allowed worsening of per-query counts, percent"),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help=SCEN_HELP + " (default: the baseline's)"),
    duration: Optional[float] = typer.Option(None, "--duration", help="seconds per window (default: the baseline's)"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="(default: the baseline's)"),
    clients: Optional[int] = typer.Option(None, "--clients", help="(default: the baseline's)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="windows per scenario (default: the baseline's)"),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    pid: Optional[int] = typer.Option(None, "--pid", help=SERVER_PID_HELP),
    probes: Optional[str] = typer.Option(None, "--probes", help=PROBES_HELP + " (default: the baseline's)"),
    engine: Optional[str] = typer.Option(None, "--engine", help="(default: the baseline's)"),
    timeout_ms: Optional[int] = typer.Option(None, "--timeout-ms", help="(default: the baseline's)"),
    results_dir: Path = typer.Option(Path("performance_results"), "--results-dir", help="parent of the run's <UTC stamp>-check directory"),
    json_path: Optional[str] = typer.Option(None, "--json", help="also write the verdict table as JSON to this file (- for stdout)"),
    instructions: bool = typer.Option(True, "--instructions/--no-instructions", help=INSTR_HELP),
    command: Optional[List[str]] = typer.Argument(None, help=SERVER_CMD_HELP),
) -> None:
    """Compare repeated windows with a baseline (or with another commit, --against): exit 0 pass,
    1 regression, 2 inconclusive, 3 environment/input error."""
    from tools.against import run_against
    from tools.errors import EXIT_ENVIRONMENT, ToolError
    from tools.gate import default_baseline_path, run_check
    from tools.verdict import Thresholds

    if not max_regression > 0 or not count_threshold > 0:
        raise ToolError("--max-regression and --count-threshold must be > 0", EXIT_ENVIRONMENT)
    opts, given = lab_options(scenarios, duration, warmup, clients, repeats, server, pid, probes,
                               engine, timeout_ms, results_dir, command, instructions)
    th = Thresholds(max_regression_pct=max_regression, count_pct=count_threshold)
    with interruptible():
        if against is not None:
            result = run_against(opts, against, th, given, baseline or default_baseline_path(), say=say)
        else:
            result = run_check(opts, baseline or default_baseline_path(), th, given, say=say)
    print_check(result, to_stderr=json_path == "-")
    if json_path is not None:
        write_verdict(result.document, json_path)
    raise typer.Exit(result.exit_code)


def write_verdict(document: dict, path: str) -> None:
    """`--json`: the verdict table to a file (atomically) or, for "-", alone on stdout."""
    import json

    from heimdall.atomic import atomic_write_json

    if path == "-":
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        atomic_write_json(path, document)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.4g}"


def print_check(result, to_stderr: bool = False) -> None:
    """The verdict table for people; on stderr when stdout carries the JSON (`--json -`)."""
    from rich.console import Console
    from rich.table import Table

    out = Console(width=max(Console().width, 124), stderr=to_stderr)
    err = Console(stderr=True, soft_wrap=True)
    if result.fingerprint_warnings:
        err.print("[bold yellow]WARNING: this machine differs from the baseline's: "
                  + "; ".join(result.fingerprint_warnings) + " -- figures may not be comparable[/]", highlight=False)
    against = result.document.get("against")
    what = f"{against['ref']} ({against['describe']})" if against else "baseline"
    table = Table(title=f"check against {what} ((info) rows are shown but do not set the exit status; "
                        "change of a paired row: of its ratio to the window measured beside it)")
    for col in ("scenario", "metric", "unit", "baseline" if not against else "ref", "current", "change",
                "basis", "verdict"):
        table.add_column(col, justify="right" if col in ("baseline", "ref", "current", "change") else "left",
                         no_wrap=col != "unit")
    colour = {"regression": "bold red", "worse": "magenta", "inconclusive": "yellow", "improved": "green", "ok": ""}
    for r in result.rows:
        change = "n/a" if r.change_pct is None else f"{r.change_pct:+.1f}%"
        verdict = f"[{colour[r.verdict]}]{r.verdict}[/]" if colour[r.verdict] else r.verdict
        table.add_row(r.scenario, r.metric + ("" if r.gate else " (info)"), r.unit, _num(r.baseline),
                      _num(r.current), change, r.basis, verdict)
    out.print(table)
    for r in result.rows:
        if r.verdict in ("regression", "worse") or (r.verdict == "inconclusive" and r.gate):
            out.print(f"  {r.scenario}/{r.metric}: {r.verdict}: {r.reason}", highlight=False, soft_wrap=True)
    out.print(f"{result.reason} (exit {result.exit_code})", highlight=False, soft_wrap=True)
    if result.results_dir:
        out.print(f"report: {result.results_dir / 'performance_report.md'} "
                  f"(verdicts: {result.results_dir / 'check_report.md'})", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
