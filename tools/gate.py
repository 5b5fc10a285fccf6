"""The regression gate behind `baseline create` and `check`: repeated windows against a stored baseline.

check reads the baseline first (a missing or corrupt one is exit 3 before any
load runs), measures with the baseline's own load parameters and probe set
unless told otherwise (differing probe sets or clients are exit 3: not
comparable), judges every metric with `verdict.judge`, prints one table and
exits 0 pass / 1 regression / 2 inconclusive. Every check run is also
written as a baseline-format document, so a run can be promoted on purpose.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from heimdall.atomic import atomic_write_json, atomic_write_text
from tools import instructions
from tools.baseline import build_document, fingerprint_differences, incomparable_reason, read_baseline, write_baseline
from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.files import new_results_dir
from tools.gate_metrics import BY_KEY
from tools.measure import LabOptions, attached_probes, open_target, run_windows, validate_numbers, window_line
from tools.pairing import PAIRED_KINDS, beside_reference, ratio_floor
from tools.reference import VERSION as REFERENCE_VERSION
from tools.verdict import INCONCLUSIVE, REGRESSION, MetricVerdict, Series, Thresholds, judge, overall

REPO_ROOT = Path(__file__).resolve().parent.parent


def machine_kind() -> str:
    """The committed baseline's name for this kind of machine (server language + cores)."""
    return f"python-{os.cpu_count()}core"


def default_baseline_path() -> Path:
    root = REPO_ROOT if (REPO_ROOT / "baselines").is_dir() else Path.cwd()
    return root / "baselines" / f"{machine_kind()}.json"


def measure_repeats(opts: LabOptions, say: Callable[[str], None], reference: bool = True) -> tuple[dict, list[dict]]:
    """Instructions per query counted first (when opts ask and the lab starts the server), then all
    repeats with the probe set required, each window beside one of the reference responder's
    unless `reference` is False: one baseline-format document."""
    validate_numbers(opts)
    counted = instructions.count(opts, say)
    with open_target(opts) as target:
        say(f"measuring {', '.join(opts.scenarios)} x {opts.repeats} repeats of {opts.duration:g}s "
            f"against {target.server} (pid {target.pid}), probes: {', '.join(opts.probes) or 'none'}"
            + (", each window beside the reference responder's" if reference else ""))
        with attached_probes(target, opts.probes, required=True) as (probes, _):
            if reference:
                windows, ref_info = beside_reference(opts, target, probes, say)
            else:
                windows, ref_info = run_windows(opts, target, probes, on_window=lambda w: say(window_line(w))), None
    if not any(w["load"].get("received") for w in windows):
        raise ToolError(f"server {target.server} answered no queries during the run", EXIT_ENVIRONMENT)
    return build_document(windows, opts.load_params(), opts.probes, target.info, ref_info, counted), windows


def create_baseline(opts: LabOptions, output: Path, say: Callable[[str], None] = print,
                    reference: bool = True) -> Path:
    _ensure_writable(Path(output))
    doc, _ = measure_repeats(opts, say, reference)
    path = write_baseline(output, doc)
    say(f"baseline written to {path}")
    return path


def _ensure_writable(path: Path) -> None:
    """Fail before minutes of measuring, not after."""
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolError(f"cannot create {parent}: {exc.strerror or exc}", EXIT_ENVIRONMENT) from None
    if not os.access(parent, os.W_OK) or path.is_dir():
        raise ToolError(f"cannot write {path}", EXIT_ENVIRONMENT)


@dataclass
class CheckResult:
    exit_code: int
    reason: str
    rows: list[MetricVerdict]
    fingerprint_warnings: list[str]
    results_dir: Path | None
    document: dict  # the verdict table as check.json has it


def apply_baseline_defaults(opts: LabOptions, base: dict, given: set[str]) -> None:
    """Options the user did not give are taken from the baseline's load parameters."""
    load = base["load"]
    if "scenarios" not in given:
        opts.scenarios = [s for s in load.get("scenarios", base["scenarios"]) if s in base["scenarios"]]
    if "duration" not in given and "duration_s" in load:
        opts.duration = float(load["duration_s"])
    if "warmup" not in given and "warmup_s" in load:
        opts.warmup = float(load["warmup_s"])
    if "repeats" not in given and "repeats" in load:
        opts.repeats = int(load["repeats"])
    if "clients" not in given and "clients" in load:
        opts.clients = int(load["clients"])
    for key in ("timeout_ms", "engine"):
        if key not in given and key in load:
            setattr(opts, key, load[key])
    if "probes" not in given:
        opts.probes = list(base["probes"])


def compare(base: dict, cur: dict, th: Thresholds, same_minutes: bool = False) -> list[MetricVerdict]:
    """Every metric both documents have, judged; on paired ratios where both have them.
    `same_minutes`: both were measured side by side in this run, so machine load moved both alike.

    A timing gates only where nothing steadier judges the same thing: where both counted
    instructions per query, CPU per query is shown but does not gate (beside the reference it still
    moved 10 % between checks of unchanged code here; the counts move less than 0.1 %)."""
    busy = None if same_minutes else th.machine_busy(_median(base), _median(cur))
    rows = []
    for scenario, metrics in cur["scenarios"].items():
        base_metrics = base["scenarios"].get(scenario, {})
        counted = instructions.METRIC in metrics and instructions.METRIC in base_metrics
        for key in (m for m in BY_KEY if m in metrics and m in base_metrics):
            spec = BY_KEY[key]
            # the floor is the gate's policy, not a fact of the baseline: today's catalogue decides
            b, c = {**base_metrics[key], "abs_floor": spec.abs_floor}, metrics[key]
            gate = spec.gate and not (counted and spec.kind == "cost")
            if "ratios" in b and "ratios" in c:
                row = judge_paired(scenario, key, b, c, th, gate and spec.kind != "time")
            else:
                base_s, cur_s = Series.from_json(b), Series.from_json(c)
                pairs = same_minutes and spec.kind in PAIRED_KINDS and len(base_s.values) == len(cur_s.values)
                row = judge(scenario, key, base_s, cur_s, th, machine_busy=busy,
                            gate=gate and not (pairs and spec.kind == "time"), paired=pairs)
                row.basis = "counted" if spec.kind == "work" else row.basis
            if counted and spec.kind == "cost":
                row.reason += "; the instructions counted per query judge the code's CPU cost here"
            rows.append(row)
    return rows


def judge_paired(scenario: str, key: str, base: dict, cur: dict, th: Thresholds, gate: bool) -> MetricVerdict:
    """Judge the ratios to the reference; the row still shows the raw medians people read.

    Wall-clock figures of a pair are shown but do not gate (`compare` passes gate=False for them):
    both servers share one CPU (tools/placement.py), so their throughput and latency follow how
    the scheduler splits it, which moved the q/s ratio 2-fold between windows of unchanged code;
    CPU per query is the timing that a slower code path moves and the scheduler does not."""
    floor = ratio_floor(float(base.get("abs_floor", 0.0)), base.get("reference") or [])

    def ratios(d: dict) -> Series:
        return Series(values=[float(v) for v in d["ratios"]], unit="x reference", better=str(d["better"]),
                      kind=str(d.get("kind", "time")), abs_floor=floor)

    row = judge(scenario, key, ratios(base), ratios(cur), th, machine_busy=None, gate=gate)
    row.unit, row.basis = str(base["unit"]), "paired"
    row.baseline, row.current = Series.from_json(base).median, Series.from_json(cur).median
    row.reason = f"{row.reason} (ratio to the reference {row_ratio(base)} -> {row_ratio(cur)})"
    raw_worse = raw_worsening_pct(row)
    if row.verdict == REGRESSION and raw_worse <= row.threshold_pct:
        row.verdict = INCONCLUSIVE
        row.reason += (f", but the figure itself is worse by only {raw_worse:.1f}%: the reference and the "
                       "target moved differently, so neither alone is believed")
    return row


def raw_worsening_pct(row: MetricVerdict) -> float:
    """How much worse the raw median is than the baseline's, in percent (negative: better).

    A paired regression must also show in the raw figure: a machine that is uniformly slower
    moves the raw figure and not the ratio, a reference that moves unlike the target moves the
    ratio and not the raw figure (seen: a check whose CPU per query fell 8 % while its ratio to
    the reference rose 12 %); a slower target moves both."""
    if not row.baseline:
        return 0.0
    sign = 1.0 if row.better == "lower" else -1.0
    return sign * 100.0 * (row.current - row.baseline) / abs(row.baseline)


def row_ratio(d: dict) -> str:
    return f"{statistics.median(d['ratios']):.3f}"


def _median(doc: dict) -> float:
    vals = (doc.get("environment", {}).get("foreign_cpu_cores") or {}).get("values") or []
    return statistics.median(vals) if vals else 0.0


def run_check(opts: LabOptions, baseline_path: Path, th: Thresholds, given: set[str],
              say: Callable[[str], None] = print) -> CheckResult:
    base = read_baseline(baseline_path)
    apply_baseline_defaults(opts, base, given)
    why = incomparable_reason(base, opts.load_params(), opts.probes)
    if why:
        raise ToolError(f"cannot compare with {baseline_path}: {why}", EXIT_ENVIRONMENT)
    if abs(float(base["load"].get("duration_s", opts.duration)) - opts.duration) > 1e-9:
        say(f"warning: window length {opts.duration:g}s differs from the baseline's "
            f"{base['load']['duration_s']:g}s")
    paired = bool(base.get("reference"))
    if paired and base["reference"].get("version") != REFERENCE_VERSION:
        raise ToolError(f"cannot compare with {baseline_path}: it was measured beside reference responder "
                        f"{base['reference'].get('version')}, this lab has {REFERENCE_VERSION} "
                        "(make a new baseline)", EXIT_ENVIRONMENT)
    if not paired:
        say("note: the baseline has no reference measurements, so timings are judged as absolute "
            "figures (a new baseline judges them beside the reference responder)")
    cur, windows = measure_repeats(opts, say, reference=paired)
    rows = compare(base, cur, th)
    if not rows:
        raise ToolError("no metric in common with the baseline", EXIT_ENVIRONMENT)
    code, reason = overall(rows)
    warnings = fingerprint_differences(base["fingerprint"], cur["fingerprint"])
    if (base.get("target") or {}).get("kind") != (cur.get("target") or {}).get("kind"):
        warnings.append(f"target {base.get('target', {}).get('kind')!r} -> {cur['target'].get('kind')!r}")
    doc = check_document(baseline_path, code, reason, th, warnings, rows)
    out = write_results(opts, cur, windows, rows, doc, warnings, str(baseline_path), th)
    return CheckResult(code, reason, rows, warnings, out, doc)


def check_document(baseline_path: str | Path, code: int, reason: str, th: Thresholds, warnings: list[str],
                   rows: list[MetricVerdict]) -> dict:
    """The verdict table as JSON (check.json, and `check --json`)."""
    return {"schema": "heimdall.check/1", "baseline": str(baseline_path), "exit_code": code, "reason": reason,
            "max_regression_pct": th.max_regression_pct, "count_threshold_pct": th.count_pct,
            "alpha": th.alpha, "fingerprint_differences": warnings, "rows": [r.as_dict() for r in rows]}


def write_results(opts, cur, windows, rows, doc, warnings, baseline_path, th, extra: dict | None = None) -> Path | None:
    """run.json (promotable to a baseline), check.json, check_report.md and performance_report.md,
    and `extra` {file name: document}."""
    from tools.report import check_markdown, write_report

    code, reason = doc["exit_code"], doc["reason"]
    out = new_results_dir(opts.results_dir, "check")
    atomic_write_json(out / "run.json", cur)
    atomic_write_json(out / "check.json", doc)
    for name, document in (extra or {}).items():
        atomic_write_json(out / name, document)
    atomic_write_text(out / "check_report.md", check_markdown(rows, code, reason, warnings, baseline_path, th))
    meta = {"target": cur["target"], "probes_requested": opts.probes, "probes_unavailable": None,
            "check": {"exit_code": code, "reason": reason}}
    write_report(out / "performance_report.md", windows, meta, resource_rows=None)
    return out
