"""`heimdall-tools history`: one metric across the recorded runs, in commit order, as a table and a PNG.

The runs are read by tools/history.py; this module parses the options,
prints the table (or, without --metric, what there is to follow) and draws
the chart with tools/chart.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tools.commands.options import say


def history(
    metric: Optional[str] = typer.Option(
        None, "--metric",
        help="the metric to follow, e.g. cpu_us_per_query or qps (compare runs: qps_dnsperf, ...); "
             "without it, list the metrics and scenarios the runs have"),
    scenario: Optional[str] = typer.Option(
        None, "--scenario", help="only this scenario, e.g. cache-hit (compare runs: a contestant, e.g. heimdall)"),
    results_dir: Path = typer.Option(
        Path("performance_results"), "--results-dir", help="the folder of runs to read, subfolders included"),
    png: Optional[Path] = typer.Option(
        None, "--png", help="where the chart goes (default <results-dir>/history-<metric>[-<scenario>].png)"),
) -> None:
    """A metric across the recorded bench, check and compare runs, oldest first, with each run's commit; and a PNG."""
    from tools.errors import EXIT_USAGE, ToolError
    from tools.history import read_history

    if png is not None and metric is None:
        raise ToolError("--png needs --metric (the chart is of one metric)", EXIT_USAGE)
    hist = read_history(results_dir, warn=lambda m: say(f"warning: {m}"))
    if hist.without_commit:
        say(f"note: {hist.without_commit} result(s) in {results_dir} were made before runs recorded "
            "their commit and are left out")
    if metric is None:
        print_metrics(hist, scenario, results_dir)
        return
    rows = hist.series(metric, scenario)
    print_series(rows, metric)
    path = png or results_dir / f"history-{metric}{'-' + scenario if scenario else ''}.png"
    print(f"chart: {draw(rows, metric, path)}")


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.4g}"


def _console():
    from rich.console import Console

    return Console(width=max(Console().width, 110), soft_wrap=True)


def print_metrics(hist, scenario: str | None, results_dir: Path) -> None:
    """Without --metric: every metric with the scenarios (and how many runs) that have it."""
    from rich.table import Table

    from tools.errors import EXIT_USAGE, ToolError
    from tools.history import unit

    metrics = hist.metrics()
    if scenario is not None:
        metrics = {m: {s: n for s, n in per.items() if s == scenario} for m, per in metrics.items()}
        metrics = {m: per for m, per in metrics.items() if per}
        if not metrics:
            known = sorted({s for run in hist.runs for s in run.medians})
            raise ToolError(f"no run measured scenario {scenario!r} (scenarios: {', '.join(known)})", EXIT_USAGE)
    runs, commits = hist.runs, {r.label for r in hist.runs}
    table = Table(title=f"{len(runs)} runs of {len(commits)} commit(s) in {results_dir}, "
                        f"{runs[0].stamp} to {runs[-1].stamp} (UTC); follow one with --metric")
    for col in ("metric", "unit", "scenarios (runs)"):
        table.add_column(col)
    for m, per in metrics.items():
        table.add_row(m, unit(m), ", ".join(f"{s} ({n})" for s, n in per.items()))
    _console().print(table)


def print_series(rows, metric: str) -> None:
    """One line per run and scenario: stamp, command, commit, scenario, median, change from the previous run."""
    from rich.table import Table

    from tools.history import lower_is_better, unit

    lower = lower_is_better(metric)
    table = Table(title=f"{metric} across runs, oldest first ({'lower' if lower else 'higher'} is better)")
    for col in ("stamp (UTC)", "command", "commit", "scenario", f"{metric} ({unit(metric)})", "change"):
        table.add_column(col, justify="right" if col in ("change",) or col.startswith(metric) else "left",
                         no_wrap=True)
    for r in rows:
        change = "" if r.change_pct is None else f"{r.change_pct:+.1f}%"
        if r.change_pct:
            worse = (r.change_pct > 0) == lower
            change = f"[{'red' if worse else 'green'}]{change}[/]"
        table.add_row(r.run.stamp, r.run.command, r.run.label, r.scenario, _num(r.value), change)
    _console().print(table)


def draw(rows, metric: str, path: Path) -> Path:
    """The chart: x = the runs in order, labelled commit and stamp; one line per scenario."""
    from tools.chart import history_chart
    from tools.errors import EXIT_ENVIRONMENT, ToolError
    from tools.history import lower_is_better, unit

    runs: list = []
    for r in rows:
        if not runs or runs[-1] is not r.run:
            runs.append(r.run)
    index = {id(run): i for i, run in enumerate(runs)}
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault(r.scenario, []).append((index[id(r.run)], r.value))
    better = "lower" if lower_is_better(metric) else "higher"
    try:
        return history_chart([f"{run.label}\n{run.stamp}" for run in runs], series,
                             f"{metric} across runs ({better} is better)", f"{metric} ({unit(metric)})", path)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror or exc}", EXIT_ENVIRONMENT) from None


def register(app: typer.Typer) -> None:
    app.command("history")(history)
