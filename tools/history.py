"""The lab's runs over time: every recorded run in a results folder, and one metric across them.

A *run* is one result that records its commit (tools/provenance.py):

  bench     <stamp>-bench/bench.json (heimdall.bench/1) and its window files
            (heimdall.window/1): per scenario, the median over its windows of
            each tools/gate_metrics.py metric
  check     <stamp>-check/run.json, and any baseline file (heimdall.baseline/1 or /2):
            the per-scenario medians it stores
  compare   <stamp>-compare/compare.json (heimdall.compare/1): each contestant's
            median of the side-by-side metrics, the contestant standing in for
            the scenario

Runs are ordered by the UTC time they record, which for runs of one checkout
is commit order. Results written before runs recorded a commit are counted
and left out; a file that cannot be read or is not JSON is skipped with a
warning, never an error.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tools.errors import EXIT_ENVIRONMENT, EXIT_USAGE, ToolError
from tools.gate_metrics import BY_KEY, window_metrics
from tools.sidebyside.options import METRICS as COMPARE_METRICS

BENCH, WINDOW, COMPARE = "heimdall.bench/1", "heimdall.window/1", "heimdall.compare/1"
BASELINES = ("heimdall.baseline/1", "heimdall.baseline/2")
Warn = Callable[[str], None]
RESULTS_DIR_NAME = re.compile(r"(\d{8}-\d{6})-[a-z]+(-\d+)?")  # tools/files.py new_results_dir, UTC


@dataclass
class Run:
    time: datetime                # UTC
    command: str                  # bench, check, baseline or compare
    commit: str | None            # None: recorded where no git checkout was
    path: Path                    # the run's JSON
    medians: dict[str, dict[str, float]] = field(default_factory=dict)   # scenario -> metric -> median

    @property
    def stamp(self) -> str:
        return self.time.strftime("%Y%m%d-%H%M%S")

    @property
    def label(self) -> str:
        return self.commit or "unknown"


@dataclass
class Row:
    run: Run
    scenario: str
    value: float
    change_pct: float | None      # against the previous run of the same scenario


@dataclass
class History:
    runs: list[Run]               # in time order
    without_commit: int           # results made before runs recorded a commit

    def metrics(self) -> dict[str, dict[str, int]]:
        """metric -> scenario -> number of runs that measured it."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for run in self.runs:
            for scenario, values in run.medians.items():
                for metric in values:
                    out[metric][scenario] += 1
        return {m: dict(sorted(s.items())) for m, s in sorted(out.items(), key=lambda kv: metric_order(kv[0]))}

    def series(self, metric: str, scenario: str | None = None) -> list[Row]:
        """The metric in every run (each of its scenarios, or only `scenario`), oldest first."""
        have = self.metrics()
        if metric not in have:
            known = metric in BY_KEY or metric in COMPARE_METRICS
            raise ToolError(f"{'no run measured' if known else 'unknown'} metric {metric!r} "
                            f"(metrics in these runs: {', '.join(have)})", EXIT_USAGE)
        if scenario is not None and scenario not in have[metric]:
            raise ToolError(f"no run measured {metric} in scenario {scenario!r} (scenarios with it: "
                            f"{', '.join(have[metric])})", EXIT_USAGE)
        rows: list[Row] = []
        previous: dict[str, float] = {}
        for run in self.runs:
            for scen, values in sorted(run.medians.items()):
                if metric not in values or scenario not in (None, scen):
                    continue
                value, prev = values[metric], previous.get(scen)
                change = (value - prev) / abs(prev) * 100 if prev else None
                rows.append(Row(run, scen, value, change))
                previous[scen] = value
        return rows


def metric_order(metric: str) -> int:
    """The gate's catalogue order, then the side-by-side metrics in theirs."""
    keys = list(BY_KEY) + list(COMPARE_METRICS)
    return keys.index(metric) if metric in keys else len(keys)


def unit(metric: str) -> str:
    if metric in BY_KEY:
        return BY_KEY[metric].unit
    return COMPARE_METRICS[metric][1] if metric in COMPARE_METRICS else ""


def lower_is_better(metric: str) -> bool:
    if metric in BY_KEY:
        return BY_KEY[metric].better == "lower"
    return not COMPARE_METRICS[metric][2] if metric in COMPARE_METRICS else False


def read_history(results_dir: Path, warn: Warn) -> History:
    """Every run under `results_dir` that records a commit, oldest first; ToolError when there is none."""
    if not results_dir.is_dir():
        raise ToolError(f"no results folder {results_dir} (bench, check and compare write their runs there; "
                        "--results-dir names another)", EXIT_ENVIRONMENT)
    docs = {}
    for path in sorted(results_dir.rglob("*.json")):
        doc = load(path, warn)
        if doc is not None:
            docs[path] = doc
    runs, without = [], 0
    for path, doc in docs.items():
        if doc.get("schema") not in (*BASELINES, BENCH, COMPARE):
            continue
        if "commit" not in doc:
            without += 1
            continue
        run = to_run(path, doc, docs, warn)
        if run is not None and run.medians:
            runs.append(run)
    if not runs:
        older = f" ({without} made before runs recorded their commit)" if without else ""
        raise ToolError(f"no runs with a recorded commit in {results_dir}{older}: run bench, check or "
                        "compare first", EXIT_ENVIRONMENT)
    runs.sort(key=lambda r: (r.time, str(r.path)))
    return History(runs, without)


def load(path: Path, warn: Warn) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        warn(f"skipped {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})")
        return None
    except json.JSONDecodeError as exc:
        warn(f"skipped {path}: not valid JSON (line {exc.lineno}: {exc.msg})")
        return None
    if not isinstance(doc, dict):
        warn(f"skipped {path}: not a JSON object")
        return None
    return doc


def to_run(path: Path, doc: dict, docs: dict[Path, dict], warn: Warn) -> Run | None:
    """One run from its document (and, for bench, the window files beside it); None with a warning
    when it is not shaped as its schema says. Its time is its results directory's UTC stamp, else
    the time the document records, else the file's."""
    commit = doc["commit"] if isinstance(doc["commit"], str) else None
    named = RESULTS_DIR_NAME.fullmatch(path.parent.name)
    stamp = datetime.strptime(named.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc) if named else None
    try:
        if doc["schema"] == BENCH:
            windows = [d for p, d in docs.items() if d.get("schema") == WINDOW and p.parent == path.parent]
            per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for w in windows:
                for metric, value in window_metrics(w).items():
                    per[w["scenario"]][metric].append(value)
            started = min((t for t in (parse_time(w.get("started")) for w in windows) if t), default=None)
            medians = {s: {m: statistics.median(v) for m, v in ms.items()} for s, ms in per.items()}
            return Run(stamp or started or mtime(path), "bench", commit, path, medians)
        if doc["schema"] in BASELINES:
            command = "check" if (path.parent / "check.json").exists() else "baseline"
            medians = {s: {m: float(v["median"]) for m, v in ms.items() if _number(v.get("median"))}
                       for s, ms in doc["scenarios"].items()}
            return Run(stamp or parse_time(doc.get("created")) or mtime(path), command, commit, path, medians)
        medians = {name: {m: float(s["median"]) for m, s in stats.items() if s and _number(s.get("median"))}
                   for name, stats in doc["stats"].items()}
        return Run(stamp or parse_time(doc.get("started")) or mtime(path), "compare", commit, path, medians)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        warn(f"skipped {path}: not a complete {doc['schema']} document ({type(exc).__name__}: {exc})")
        return None


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)


def mtime(path: Path) -> datetime:
    """When a document records no time: its file's; the epoch if even that is gone."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:
        return datetime.fromtimestamp(0, timezone.utc)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
