"""Two servers measured at the same time: paired windows, and ratios between them.

A shared machine changes speed under a benchmark, and not only over hours:
here the same program's CPU time per query moves by 15 % between two windows
a few seconds apart (the host's load, not anything in the VM). A timing taken
now and one stored last week answer the wrong question, and so do two windows
taken one after the other. Two servers loaded *at the same time* feel the
same machine: every window of the target runs alongside a window of its
partner, each with its own load generator, the two windows opened together
once both have warmed up, so the ratio of their figures holds still while
the machine's speed moves (measured: target/reference CPU per query within
2 % window to window, where each alone wandered 15 %). `check` uses it two
ways: beside the fixed reference responder (tools/reference.py), storing
target/reference ratios in the baseline; and beside another build of
Heimdall (`--against REF`), judging the two builds' windows pair by pair.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

from tools import lab_adapter as lab
from tools.gate_metrics import BY_KEY, window_metrics
from tools.measure import LabOptions, Reading, Target, window_line, window_record
from tools.placement import servers_apart

# figures that move with the machine's speed; counts per query and error rates do not
PAIRED_KINDS = ("time", "cost")
START_LEAD_S = 1.0   # time for both load generators to fork and be ready before their shared start


@dataclass
class Side:
    """One server of a pair, with its probes (None: none attached)."""

    name: str
    target: Target
    probes: lab.ProbeSet | None = None


def paired_windows(opts: LabOptions, a: Side, b: Side,
                   on_window: Callable[[dict], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Every repeat of every scenario on both sides at once (the scenario order rotates each repeat)."""
    got: dict[str, list[dict]] = {a.name: [], b.name: []}
    n = len(opts.scenarios)
    for repeat in range(opts.repeats):
        for scenario in (opts.scenarios[(i + repeat) % n] for i in range(n)):
            pair = measure_pair(opts, a, b, scenario, repeat)
            for side, w in zip((a, b), pair):
                got[side.name].append(w)
                if on_window is not None:
                    on_window(w)
    return got[a.name], got[b.name]


def measure_pair(opts: LabOptions, a: Side, b: Side, scenario: str, repeat: int) -> tuple[dict, dict]:
    """One window of each side, in step: one thread each, both load runs starting at one instant."""
    start_at_ns = time.monotonic_ns() + int(START_LEAD_S * 1e9)
    out: dict[str, dict] = {}
    failed: list[BaseException] = []

    def run(side: Side) -> None:
        try:
            out[side.name] = measure_in_step(opts, side, scenario, repeat, start_at_ns)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            failed.append(exc)

    threads = [threading.Thread(target=run, args=(side,), daemon=True) for side in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    wa, wb = out[a.name], out[b.name]
    share_environment(wa, wb)
    wa["partner"], wb["partner"] = b.target.server, a.target.server
    return wa, wb


def measure_in_step(opts: LabOptions, side: Side, scenario: str, repeat: int, start_at_ns: int) -> dict:
    """One load run (warm-up, then the window) that starts at start_at_ns, the window's readings
    taken at the instants it opens and closes, so a partner's window covers the same time."""
    opens = start_at_ns + int(opts.warmup * 1e9)
    closes = opens + int(opts.duration * 1e9)
    readings: list[Reading] = []

    def read() -> None:
        if side.probes is not None:
            side.probes.prepare_window()   # during the lead and warm-up; nothing counts until started
        _sleep_until(opens)
        readings.append(Reading.take(side.target.pid))
        if side.probes is not None:
            side.probes.start_window()
        _sleep_until(closes)
        readings.append(Reading.take(side.target.pid))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    clients = lab.clients_for(scenario, opts.clients)
    load = lab.run_load(scenario, side.target.server, opts.duration, clients, opts.timeout_ms, opts.engine,
                        warmup=opts.warmup, prime=opts.warmup <= 0, start_at_ns=start_at_ns)
    reader.join()
    raw = side.probes.collect(lab.answered(load)) if side.probes is not None else {}
    w = window_record(opts, side.target, scenario, repeat, load, raw, *readings)
    w["side"] = side.name
    return w


def _sleep_until(instant_ns: int) -> None:
    left = (instant_ns - time.monotonic_ns()) / 1e9
    if left > 0:
        time.sleep(left)


def share_environment(a: dict, b: dict) -> None:
    """Foreign CPU of a pair: the machine's busy time over the window less both servers and both
    load generators (each side alone would count its partner as foreign)."""
    ours = sum(w["server_cpu"]["cores_used"] + w["load"]["generator"]["cpu_percent"] / 100 for w in (a, b))
    for w in (a, b):
        env = w["environment"]
        busy = env["foreign_cpu_cores"] + w["server_cpu"]["cores_used"] + env["generator_cpu_cores"]
        env["generator_cpu_cores"] = round(w["load"]["generator"]["cpu_percent"] / 100, 3)
        env["foreign_cpu_cores"] = round(max(busy - ours, 0.0), 3)


def beside_reference(opts: LabOptions, target: Target, probes: lab.ProbeSet | None,
                     say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The target's windows, each with its reference partner's figures, and what the reference was."""
    from tools.reference import KIND, VERSION, ReferenceResponder

    with ReferenceResponder() as ref:
        reference = Side("reference", Target(ref.addr, int(ref.pid or 0), ref.describe()))
        with servers_apart([target.pid, reference.target.pid]) as placement:
            theirs, mine = paired_windows(opts, reference, Side("target", target, probes),
                                          on_window=lambda w: say(side_line(w)))
    return attach_reference(mine, theirs), {"kind": KIND, "version": VERSION, "placement": placement}


def side_line(w: dict) -> str:
    """The progress line of one window, with the side it belongs to."""
    return f"{w['side'][:12]:>12} " + window_line(w).lstrip()


def attach_reference(windows: list[dict], reference: list[dict]) -> list[dict]:
    """Give each target window its partner's figures (`reference`), the input of `paired_ratios`."""
    for w, ref in zip(windows, reference, strict=True):
        w["reference"] = {"server": ref["params"].get("server"), "metrics": window_metrics(ref),
                          "cores_used": ref["server_cpu"]["cores_used"]}
    return windows


def paired_ratios(windows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """{metric: {"ratios": target/reference per window, "reference": the reference's values}} for
    the time and cost metrics every window has a usable partner for (else the metric is left out)."""
    out: dict[str, dict[str, list[float]]] = {}
    if not windows or not all("reference" in w for w in windows):
        return out
    per_window = [(window_metrics(w), w["reference"]["metrics"]) for w in windows]
    for key, spec in BY_KEY.items():
        if spec.kind not in PAIRED_KINDS:
            continue
        pairs = [(mine.get(key), theirs.get(key)) for mine, theirs in per_window]
        if all(t is not None and r for t, r in pairs):
            out[key] = {"ratios": [round(t / r, 6) for t, r in pairs],
                        "reference": [round(r, 6) for _, r in pairs]}
    return out


def ratio_floor(abs_floor: float, reference: list[float]) -> float:
    """A metric's absolute floor in units of the reference's median (ratios have no unit)."""
    med = statistics.median(reference) if reference else 0.0
    return abs_floor / med if med else 0.0
