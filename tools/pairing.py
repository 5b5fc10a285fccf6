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
from dataclasses import dataclass
from typing import Callable

from tools import lab_adapter as lab
from tools.gate_metrics import BY_KEY, window_metrics
from tools.measure import LabOptions, Target, measure_window, window_line

# figures that move with the machine's speed; counts per query and error rates do not
PAIRED_KINDS = ("time", "cost")
REFERENCE_WARMUP_S = 0.3   # the reference keeps no state worth warming: just let its loop settle


@dataclass
class Side:
    """One server of a pair, with its probes (None: none attached) and warm-up (None: the options')."""

    name: str
    target: Target
    probes: lab.ProbeSet | None = None
    warmup: float | None = None


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
    """One window of each side, one thread each; the windows open together after both warm-ups."""
    meet = threading.Barrier(2)
    out: dict[str, dict] = {}
    failed: list[BaseException] = []

    def run(side: Side, partner: Side) -> None:
        try:
            w = measure_window(opts, side.target, scenario, repeat, side.probes, warmup=side.warmup,
                               ready=meet.wait, partner_pid=partner.target.pid)
            w["side"], w["partner"] = side.name, partner.target.server
            out[side.name] = w
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            failed.append(exc)
            meet.abort()

    threads = [threading.Thread(target=run, args=(x, y), daemon=True) for x, y in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise next((e for e in failed if not isinstance(e, threading.BrokenBarrierError)), failed[0])
    return out[a.name], out[b.name]


def beside_reference(opts: LabOptions, target: Target, probes: lab.ProbeSet | None,
                     say: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The target's windows, each with its reference partner's figures, and what the reference was."""
    from tools.reference import KIND, VERSION, ReferenceResponder

    with ReferenceResponder() as ref:
        reference = Side("reference", Target(ref.addr, int(ref.pid or 0), ref.describe()), warmup=REFERENCE_WARMUP_S)
        theirs, mine = paired_windows(opts, reference, Side("target", target, probes),
                                      on_window=lambda w: say(side_line(w)))
    return attach_reference(mine, theirs), {"kind": KIND, "version": VERSION}


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
