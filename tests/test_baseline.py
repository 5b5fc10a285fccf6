"""Baseline files (atomic, validated, fingerprinted) and the verdict statistics."""

from __future__ import annotations

import json
import math
import os

import pytest

from heimdall.atomic import atomic_write_json, atomic_write_text
from tools.baseline import (SCHEMA, build_document, fingerprint, fingerprint_differences,
                                     incomparable_reason, read_baseline, write_baseline)
from tools.measure import LabOptions, Target, measure_window
from tools.errors import EXIT_ENVIRONMENT, EXIT_INCONCLUSIVE, EXIT_OK, EXIT_REGRESSION, ToolError
from tools.verdict import (INCONCLUSIVE, OK, REGRESSION, IMPROVED, WORSE, Series, Thresholds, judge,
                                    mann_whitney_greater, normal_p_greater, overall, ranks,
                                    relative_spread)
from targets.busy_responder import Responder

TH = Thresholds(max_regression_pct=10.0, count_pct=3.0)


# --- atomic writes --------------------------------------------------------------

def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "b.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2, "b": [1, 2]})
    assert json.loads(p.read_text()) == {"a": 2, "b": [1, 2]}
    assert os.listdir(p.parent) == ["b.json"]
    assert p.stat().st_mode & 0o777 == 0o644
    os.chmod(p, 0o600)
    atomic_write_json(p, {"a": 3})
    assert p.stat().st_mode & 0o777 == 0o600       # an existing file keeps its permissions


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "b.json"
    atomic_write_text(p, "old\n")
    with pytest.raises(ValueError):
        atomic_write_json(p, {"x": math.nan})          # JSON has no NaN: refused before any write
    assert p.read_text() == "old\n"

    class Boom:
        def __str__(self):
            raise RuntimeError("mid-write crash")
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": Boom()})
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["b.json"]


# --- reading and validating -------------------------------------------------------

def _doc(**scen) -> dict:
    metrics = scen or {"qps": {"values": [10.0, 11.0, 12.0], "median": 11.0, "unit": "q/s", "better": "higher",
                               "kind": "time"}}
    return {"schema": SCHEMA, "fingerprint": fingerprint(), "probes": [], "load": {"clients": 20},
            "scenarios": {"cache-hit": metrics}}


def test_read_valid_baseline(tmp_path):
    p = write_baseline(tmp_path / "b.json", _doc())
    assert read_baseline(p)["scenarios"]["cache-hit"]["qps"]["median"] == 11.0


@pytest.mark.parametrize("text, needle", [
    (None, "no baseline"),
    ("{", "not valid JSON"),
    ('"x"', "not an object"),
    ('{"schema": "heimdall.baseline/0"}', "schema"),
    (json.dumps({**_doc(), "scenarios": {"cache-hit": {"qps": {"values": [], "unit": "q/s", "better": "higher"}}}}),
     "numeric 'values'"),
    (json.dumps({**_doc(), "scenarios": {"cache-hit": {"qps": {"values": [1], "unit": "q/s", "better": "up"}}}}),
     "direction"),
    (json.dumps({**_doc(), "probes": "lockprof"}), "'probes'"),
])
def test_unusable_baselines_are_one_line_exit_3(tmp_path, text, needle):
    p = tmp_path / "b.json"
    if text is not None:
        p.write_text(text)
    with pytest.raises(ToolError) as err:
        read_baseline(p)
    assert err.value.exit_code == EXIT_ENVIRONMENT
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_fingerprint_differences():
    a = fingerprint()
    b = json.loads(json.dumps(a))
    assert fingerprint_differences(a, b) == []
    b["kernel"] = "9.9.9"
    b["packages"]["uvloop"] = "0.0.1"
    diffs = fingerprint_differences(a, b)
    assert any("kernel" in d for d in diffs) and any("uvloop" in d for d in diffs)


def test_incomparable_runs():
    base = _doc()
    assert incomparable_reason(base, {"clients": 20, "scenarios": ["cache-hit"]}, []) is None
    assert "probe set differs" in incomparable_reason(base, {"clients": 20}, ["lockprof"])
    assert "clients differs" in incomparable_reason(base, {"clients": 200}, [])
    assert "no scenario blocking" in incomparable_reason(base, {"clients": 20, "scenarios": ["blocking"]}, [])


def test_baseline_with_the_older_probe_names_reads_as_the_stems(tmp_path):
    """futex, malloc and udp were the probe sets' names before lockprof, memprof, netprof."""
    old = {**_doc(), "probes": ["futex", "malloc", "udp"],
           "probe_losses": {"cache-hit": {"futex": {"map_full": 0}, "udp": {"map_full": 1}}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    doc = read_baseline(path)
    assert doc["probes"] == ["lockprof", "memprof", "netprof"]
    assert doc["probe_losses"] == {"cache-hit": {"lockprof": {"map_full": 0}, "netprof": {"map_full": 1}}}
    assert incomparable_reason(doc, {"clients": 20}, ["lockprof", "memprof", "netprof"]) is None


def test_probe_lists_take_the_older_names():
    from tools.lab_adapter import parse_probe_names
    assert parse_probe_names("udp,futex") == ["lockprof", "netprof"]
    assert parse_probe_names("all") == ["lockprof", "memprof", "netprof"]
    with pytest.raises(ToolError):
        parse_probe_names("bogus")


def test_document_from_real_windows(tmp_path):
    """Two real windows per scenario fold into per-metric series with every repeat kept."""
    opts = LabOptions(scenarios=["cache-hit"], duration=0.5, warmup=0.1, repeats=2)
    with Responder(20) as r:
        target = Target(r.server, r.pid, {"kind": "external", "server": r.server})
        windows = [measure_window(opts, target, "cache-hit", i, None) for i in range(2)]
    doc = build_document(windows, opts.load_params(), [], target.info)
    p = write_baseline(tmp_path / "b.json", doc)
    back = read_baseline(p)
    cpu = back["scenarios"]["cache-hit"]["cpu_us_per_query"]
    assert len(cpu["values"]) == 2 and cpu["median"] == pytest.approx(sum(cpu["values"]) / 2)
    assert cpu["kind"] == "cost" and cpu["better"] == "lower"
    assert len(back["environment"]["foreign_cpu_cores"]["values"]) == 2
    assert back["load"]["duration_s"] == 0.5 and back["load"]["repeats"] == 2


# --- statistics ---------------------------------------------------------------------

def test_ranks_share_ties():
    assert ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]


def test_mann_whitney_exact_values():
    assert mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1 / 252)
    assert mann_whitney_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1.0)
    # one swapped pair: U = 24 of 25; P(U >= 24) = 2/252
    assert mann_whitney_greater([5, 7, 8, 9, 10], [1, 2, 3, 4, 6]) == pytest.approx(2 / 252)
    assert mann_whitney_greater([3, 3, 3], [3, 3, 3]) == pytest.approx(1.0)


def test_mann_whitney_normal_approximation_agrees_with_exact():
    x, y = [5, 7, 8, 9, 10, 11, 12, 14], [1, 2, 3, 4, 6, 8, 9, 13]   # 8 vs 8 with a tie: 12,870 splits
    exact, approx = mann_whitney_greater(x, y), normal_p_greater(x, y)
    assert 0.005 < exact < 0.05
    assert exact_p_greater(x, y) == pytest.approx(exact)   # the counting below agrees with the listing
    assert approx == pytest.approx(exact, rel=0.25)
    # 20 vs 20 (137 billion splits) takes the approximation: held to the exact tail, counted by rank sums,
    # where a gate decides (p from 0.07 to 0.008; with ties: the samples overlap)
    for shift in (3, 4, 5):
        x, y = list(range(shift, shift + 20)), list(range(0, 20))
        assert mann_whitney_greater(x, y) == normal_p_greater(x, y)
        assert mann_whitney_greater(x, y) == pytest.approx(exact_p_greater(x, y), rel=0.10), shift


def exact_p_greater(x: list[float], y: list[float]) -> float:
    """The exact one-sided Mann-Whitney p by counting the splits of the pooled mid-ranks by their sum
    (doubled to integers), not by listing them: the truth for sizes the gate approximates."""
    n, pooled = len(x), [*x, *y]
    doubled = [round(2 * r) for r in ranks(pooled)]
    observed, top = sum(doubled[:n]), sum(doubled)
    ways = [[0] * (top + 1) for _ in range(n + 1)]   # ways[k][s]: k of the ranks so far, summing to s
    ways[0][0] = 1
    for i, r in enumerate(doubled):
        for k in range(min(n, i + 1), 0, -1):
            row, prev = ways[k], ways[k - 1]
            for s in range(top, r - 1, -1):
                row[s] += prev[s - r]
    return sum(ways[n][observed:]) / math.comb(len(pooled), n)


def _s(values, better="lower", kind="time", floor=0.0):
    return Series(values=[float(v) for v in values], unit="u", better=better, kind=kind, abs_floor=floor)


def test_judge_regression_needs_size_and_significance():
    base = _s([100, 101, 99, 100, 102])
    assert judge("s", "m", base, _s([120, 121, 119, 122, 120]), TH).verdict == REGRESSION
    assert judge("s", "m", base, _s([105, 104, 106, 105, 103]), TH).verdict == OK           # real but small
    noisy = _s([80, 150, 95, 160, 118])                                                      # median +18 %, noise
    v = judge("s", "m", base, noisy, TH)
    assert v.verdict == INCONCLUSIVE and "not significant" in v.reason
    assert judge("s", "m", base, _s([80, 81, 79, 80, 82]), TH).verdict == IMPROVED


def test_judge_direction_higher_is_better():
    base = _s([1000, 1010, 990, 1005, 995], better="higher")
    assert judge("s", "qps", base, _s([800, 810, 790, 805, 795], better="higher"), TH).verdict == REGRESSION
    assert judge("s", "qps", base, _s([1200, 1210, 1190, 1205, 1195], better="higher"), TH).verdict == IMPROVED


def test_counts_have_a_tight_threshold_and_a_floor():
    base = _s([20.0, 20.0, 20.1, 20.0, 20.0], kind="count", floor=0.5)
    assert judge("s", "mallocs", base, _s([21.0, 21.0, 21.1, 21.0, 21.0], kind="count", floor=0.5), TH).verdict == REGRESSION
    same_time = _s([20.0, 20.0, 20.1, 20.0, 20.0])
    assert judge("s", "t", same_time, _s([21.0, 21.0, 21.1, 21.0, 21.0]), TH).verdict == OK   # 5 % < 10 %
    tiny = _s([0.01] * 5, kind="count", floor=0.05)
    assert judge("s", "futex", tiny, _s([0.03] * 5, kind="count", floor=0.05), TH).verdict == OK  # +200 % but tiny


def test_spread_ignores_one_outlier_window():
    assert relative_spread([157, 150, 257, 156, 156]) == pytest.approx(1 / 156)
    assert relative_spread([10, 12]) == pytest.approx(2 / 11)


def test_load_dependent_counts_are_judged_like_wall_clock():
    batched = _s([0.42, 0.47, 0.55, 0.44, 0.50], kind="count", floor=0.1)     # 30 % spread in the baseline
    cur = _s([0.50, 0.52, 0.53, 0.51, 0.52], kind="count", floor=0.1)        # +8 %: fine at 10 %
    v = judge("s", "syscalls", batched, cur, TH)
    assert v.verdict == OK and v.kind == "count (varies with load)" and v.threshold_pct == 10
    busy = TH.machine_busy(0.1, 0.9)
    worse = _s([0.70, 0.72, 0.71, 0.73, 0.70], kind="count", floor=0.1)
    assert judge("s", "syscalls", batched, worse, TH).verdict == REGRESSION
    assert judge("s", "syscalls", batched, worse, TH, machine_busy=busy).verdict == INCONCLUSIVE


def test_busy_machine_voids_wall_clock_but_not_cost():
    assert TH.machine_busy(0.1, 0.2) is None
    assert "more than 0.5" in TH.machine_busy(0.1, 0.9)
    assert "more cores than at baseline" in Thresholds(10, quiet_limit_cores=5).machine_busy(0.1, 0.9)
    busy = TH.machine_busy(0.1, 0.9)
    base_t, cur_t = _s([100] * 4 + [101]), _s([130] * 4 + [131])
    assert judge("s", "latency", base_t, cur_t, TH).verdict == REGRESSION
    v = judge("s", "latency", base_t, cur_t, TH, machine_busy=busy)
    assert v.verdict == INCONCLUSIVE and "other processes" in v.reason
    base_c, cur_c = _s([60, 61, 60, 62, 60], kind="cost"), _s([80, 81, 80, 82, 80], kind="cost")
    assert judge("s", "cpu", base_c, cur_c, TH, machine_busy=busy).verdict == REGRESSION      # +33 % > 1.5 x 10 %
    v = judge("s", "cpu", base_c, _s([67, 68, 67, 69, 67], kind="cost"), TH, machine_busy=busy)    # +12 %
    assert v.verdict == INCONCLUSIVE and "busy machine" in v.reason
    assert judge("s", "cpu", base_c, _s([69, 70, 69, 71, 69], kind="cost"), TH).verdict == REGRESSION
    noisy_c = _s([35, 60, 50, 42, 58], kind="cost")                      # middle 3 spread 32 %: varies with load
    assert judge("s", "cpu", noisy_c, _s([80, 81, 80, 82, 80], kind="cost"), TH, machine_busy=busy).verdict == INCONCLUSIVE


def test_error_rate_in_percentage_points():
    base = _s([0, 0, 0, 0, 0], kind="rate")
    assert judge("s", "err", base, _s([0.002] * 5, kind="rate"), TH).verdict == OK
    assert judge("s", "err", base, _s([0.05] * 5, kind="rate"), TH).verdict == REGRESSION


def test_few_repeats_cannot_be_significant():
    v = judge("s", "m", _s([100, 100, 100]), _s([200, 200, 200]), TH)
    assert v.verdict == INCONCLUSIVE and "cannot reach" in v.reason


def test_overall_exit_statuses():
    base = _s([100, 101, 99, 100, 102])
    ok = judge("a", "m", base, base, TH)
    bad = judge("a", "m", base, _s([130, 131, 129, 130, 132]), TH)
    unsure = judge("a", "m", base, _s([80, 150, 95, 160, 118]), TH)
    assert overall([ok])[0] == EXIT_OK
    assert overall([ok, unsure])[0] == EXIT_INCONCLUSIVE
    assert overall([ok, unsure, bad])[0] == EXIT_REGRESSION


def test_information_rows_do_not_set_the_exit_status():
    base = _s([100, 101, 99, 100, 102])
    tail = judge("a", "latency_p99_us", base, _s([130, 131, 129, 130, 132]), TH, gate=False)
    # significantly worse, and said so, but not called a regression: it does not fail the build
    assert tail.verdict == WORSE and "does not gate" in tail.reason
    assert overall([tail])[0] == EXIT_OK
