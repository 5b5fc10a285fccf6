"""The baseline file: versioned JSON of repeated measurements, and reading it safely.

A baseline (and every `check` run, written beside its report) is one document:

    schema       "heimdall.baseline/2" (/1, without reference measurements, is still read)
    created      ISO-8601 UTC time
    fingerprint  cpu_model, cores, kernel, python, packages {name: version}
    target       what was measured (server address, kind)
    probes       sorted probe set the windows ran with (compare only equal sets)
    load         scenarios, duration_s, warmup_s, clients, repeats, engine, timeout_ms
    reference    what every window was measured beside (kind, version), or null
    instructions how instructions_per_query was counted (tools/instructions.py), or null
    environment  foreign_cpu_cores: other processes' CPU use per window
    probe_losses {scenario: {probe: {map_full, stack_*, ...}}}: events probes could not record
    scenarios    {scenario: {metric: {values: [one per repeat], median, unit,
                  better: higher|lower, kind: time|cost|count|rate|work, abs_floor,
                  and for time and cost metrics measured beside a reference:
                  ratios [target/reference per repeat], reference [its values]}}}

Reading never raises anything but ToolError(EXIT_ENVIRONMENT) with one line.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from heimdall.atomic import atomic_write_json
from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.gate_metrics import BY_KEY, window_metrics
from tools.lab_adapter import PROBE_ALIASES, canonical_probe_names
from tools.provenance import git_commit

SCHEMA = "heimdall.baseline/2"
READABLE_SCHEMAS = ("heimdall.baseline/1", SCHEMA)
PACKAGES = ("heimdall-dns", "dnspython", "uvloop", "psutil")
FINGERPRINT_KEYS = ("cpu_model", "cores", "kernel", "python", "packages")
# load parameters that change what a metric means: differing ones make runs incomparable
COMPARABLE_LOAD_KEYS = ("clients", "engine", "timeout_ms", "zone")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bcc_version() -> str | None:
    """BCC is Debian's module, not a pip package: ask it."""
    try:
        import bcc
    except Exception:  # noqa: BLE001 - missing or broken BCC is simply "no version"
        return None
    return str(getattr(bcc, "__version__", "unknown"))


def probe_losses(windows: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """Per scenario and probe, the events each probe could not record, summed over windows."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for w in windows:
        for probe, res in (w.get("probes") or {}).items():
            acc = out.setdefault(w["scenario"], {}).setdefault(probe, {})
            for key, val in (res.get("lost") or {}).items():
                acc[key] = acc.get(key, 0) + int(val)
    return out


def fingerprint() -> dict[str, Any]:
    """What makes numbers from two machines (or two set-ups) comparable."""
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    packages["bcc"] = bcc_version()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "packages": packages,
    }


def fingerprint_differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences in the keys that matter, empty when equal."""
    diffs = []
    for key in FINGERPRINT_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "packages" and isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{p} {a.get(p)} -> {b.get(p)}" for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]
        elif a != b:
            diffs.append(f"{key} {a!r} -> {b!r}")
    return diffs


def build_document(windows: list[dict], load: dict, probes: list[str], target: dict,
                   reference: dict | None = None, instructions: dict[str, list[float]] | None = None) -> dict:
    """Fold every measured window into per-scenario, per-metric series (with the paired ratios
    when the windows were measured beside `reference`), and the instructions per query counted
    for each scenario (tools/instructions.py)."""
    from tools import instructions as counting
    from tools.pairing import paired_ratios

    scenarios: dict[str, dict[str, dict]] = {}
    for w in windows:
        per = scenarios.setdefault(w["scenario"], {})
        for key, value in window_metrics(w).items():
            spec = BY_KEY[key]
            entry = per.setdefault(key, {"values": [], "unit": spec.unit, "better": spec.better,
                                         "kind": spec.kind, "abs_floor": spec.abs_floor})
            entry["values"].append(round(value, 6))
    for scenario, per in scenarios.items():
        for entry in per.values():
            entry["median"] = statistics.median(entry["values"])
        for key, paired in paired_ratios([w for w in windows if w["scenario"] == scenario]).items():
            per[key].update(paired, ratio_median=statistics.median(paired["ratios"]))
    spec = BY_KEY[counting.METRIC]
    for scenario, values in (instructions or {}).items():
        if scenario in scenarios:
            scenarios[scenario][spec.key] = {
                "values": [round(v, 1) for v in values], "median": statistics.median(values), "unit": spec.unit,
                "better": spec.better, "kind": spec.kind, "abs_floor": spec.abs_floor}
    foreign = [w["environment"]["foreign_cpu_cores"] for w in windows
               if w.get("environment", {}).get("foreign_cpu_cores") is not None]
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "fingerprint": fingerprint(),
        "target": target,
        "probes": sorted(probes),
        "load": load,
        "reference": reference,
        "instructions": counting.description() if instructions else None,
        "environment": {"foreign_cpu_cores": {"values": [round(v, 4) for v in foreign],
                                              "median": statistics.median(foreign) if foreign else None}},
        "scenarios": scenarios,
        "probe_losses": probe_losses(windows),
    }


def write_baseline(path: str | os.PathLike[str], doc: dict) -> Path:
    try:
        return atomic_write_json(path, doc)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror or exc}", EXIT_ENVIRONMENT) from None


def read_baseline(path: str | os.PathLike[str]) -> dict:
    """Load and validate a baseline, or one line saying what is wrong with it."""
    p = Path(path)
    if not p.exists():
        raise ToolError(f"no baseline at {p} (create one with `heimdall-tools baseline create "
                        f"--output {p}`)", EXIT_ENVIRONMENT)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"cannot read baseline {p}: {getattr(exc, 'strerror', None) or exc}",
                        EXIT_ENVIRONMENT) from None
    except json.JSONDecodeError as exc:
        raise ToolError(f"baseline {p} is not valid JSON (line {exc.lineno}: {exc.msg})",
                        EXIT_ENVIRONMENT) from None
    problem = validate(doc)
    if problem:
        raise ToolError(f"baseline {p} is unusable: {problem}", EXIT_ENVIRONMENT)
    return current_probe_names(doc)


def current_probe_names(doc: dict) -> dict:
    """Baselines written before the probes took their command names (futex, malloc, udp) read
    as lockprof, memprof, netprof, so they still compare with today's runs."""
    doc["probes"] = canonical_probe_names(doc["probes"])
    for scenario, losses in (doc.get("probe_losses") or {}).items():
        doc["probe_losses"][scenario] = {PROBE_ALIASES.get(k, k): v for k, v in losses.items()}
    return doc


def validate(doc: Any) -> str | None:
    """None when doc is a usable baseline, else the first problem found."""
    if not isinstance(doc, dict):
        return "top level is not an object"
    if doc.get("schema") not in READABLE_SCHEMAS:
        return f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}"
    for key, typ in (("fingerprint", dict), ("probes", list), ("load", dict), ("scenarios", dict)):
        if not isinstance(doc.get(key), typ):
            return f"'{key}' is missing or not a {typ.__name__}"
    if not doc["scenarios"]:
        return "it holds no scenarios"
    for scen, metrics in doc["scenarios"].items():
        if not isinstance(metrics, dict) or not metrics:
            return f"scenario {scen!r} holds no metrics"
        for name, m in metrics.items():
            if not isinstance(m, dict):
                return f"{scen}/{name} is not an object"
            vals = m.get("values")
            if not isinstance(vals, list) or not vals or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                return f"{scen}/{name} has no numeric 'values'"
            if m.get("better") not in ("higher", "lower"):
                return f"{scen}/{name} has no direction ('better' must be higher or lower)"
            if not isinstance(m.get("unit"), str):
                return f"{scen}/{name} has no unit"
            if "ratios" in m and not _numbers(m["ratios"], len(vals)):
                return f"{scen}/{name} has 'ratios' that are not one positive number per repeat"
    return None


def _numbers(values: Any, n: int) -> bool:
    return (isinstance(values, list) and len(values) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values))


def incomparable_reason(base: dict, load: dict, probes: list[str]) -> str | None:
    """Why a run with these parameters cannot be compared with `base`, or None."""
    if sorted(probes) != sorted(base["probes"]):
        return (f"probe set differs: baseline ran with {_probe_list(base['probes'])}, "
                f"this run with {_probe_list(probes)}")
    for key in COMPARABLE_LOAD_KEYS:
        if key in base["load"] and key in load and base["load"][key] != load[key]:
            return f"load parameter {key} differs: baseline {base['load'][key]!r}, this run {load[key]!r}"
    missing = [s for s in load.get("scenarios", []) if s not in base["scenarios"]]
    if missing:
        return f"baseline has no scenario {', '.join(missing)} (it has {', '.join(base['scenarios'])})"
    return None


def _probe_list(probes: list[str]) -> str:
    return "{" + ", ".join(sorted(probes)) + "}" if probes else "no probes"
