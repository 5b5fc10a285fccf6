"""`check --against REF`: this tree and another commit measured in one run, judged pair by pair.

What a CI job on a pull request needs: REF (`origin/main`, `HEAD~1`) is built
beside this tree (tools/refbuild.py), both servers are started on loopback
with their own upstream, and every window of one runs alongside a window of
the other (tools/pairing.py: both loaded at the same time). The verdict is the
same module's as the JSON baseline's (tools/verdict.py), on the ratios of
the pairs: a busy machine slows both builds alike.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

from tools import instructions
from tools.baseline import build_document, read_baseline
from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.gate import CheckResult, apply_baseline_defaults, check_document, compare, write_results
from tools.measure import LabOptions, attached_probes, open_target, validate_numbers
from tools.pairing import Side, paired_windows, side_line
from tools.placement import servers_apart
from tools.refbuild import REPO_ROOT, built
from tools.verdict import Thresholds, overall

THIS_TREE = "this tree"


def run_against(opts: LabOptions, ref: str, th: Thresholds, given: set[str], baseline_path: Path,
                say: Callable[[str], None] = print) -> CheckResult:
    """Measure REF and this tree side by side; exit code and rows as `check` against a baseline."""
    if opts.server is not None or opts.pid is not None or opts.command:
        raise ToolError("--against starts both builds itself: drop --server, --pid and -- COMMAND",
                        EXIT_ENVIRONMENT)
    _load_defaults(opts, baseline_path, given, say)
    validate_numbers(opts)
    with built(ref, say) as build:
        label = f"{ref} ({build.describe})"
        their_counts = instructions.count(opts, say, env={"PYTHONPATH": str(build.path)})
        my_counts = instructions.count(opts, say, env={"PYTHONPATH": str(REPO_ROOT)})
        with contextlib.ExitStack() as stack:
            theirs = stack.enter_context(open_target(opts, env={"PYTHONPATH": str(build.path)}))
            mine = stack.enter_context(open_target(opts, env={"PYTHONPATH": str(REPO_ROOT)}))
            say(f"measuring {', '.join(opts.scenarios)} x {opts.repeats} repeats of {opts.duration:g}s: "
                f"{label} on {theirs.server} and {THIS_TREE} on {mine.server}, window by window; "
                f"probes: {', '.join(opts.probes) or 'none'}")
            their_probes, _ = stack.enter_context(attached_probes(theirs, opts.probes, required=True))
            my_probes, _ = stack.enter_context(attached_probes(mine, opts.probes, required=True))
            stack.enter_context(servers_apart([theirs.pid, mine.pid]))
            their_w, my_w = paired_windows(opts, Side(ref, theirs, their_probes), Side(THIS_TREE, mine, my_probes),
                                           on_window=lambda w: say(side_line(w)))
    base = build_document(their_w, opts.load_params(), opts.probes, theirs.info, instructions=their_counts)
    cur = build_document(my_w, opts.load_params(), opts.probes, mine.info, instructions=my_counts)
    rows = compare(base, cur, th, same_minutes=True)
    if not rows:
        raise ToolError("no metric was measured on both builds", EXIT_ENVIRONMENT)
    code, reason = overall(rows)
    doc = check_document(label, code, reason, th, [], rows)
    doc["against"] = {"ref": ref, "commit": build.commit, "describe": build.describe}
    out = write_results(opts, cur, my_w, rows, doc, [], label, th, extra={"against_run.json": base})
    return CheckResult(code, reason, rows, [], out, doc)


def _load_defaults(opts: LabOptions, baseline_path: Path, given: set[str], say: Callable[[str], None]) -> None:
    """The committed baseline's load parameters and probe set, when there is one: one load for both jobs."""
    try:
        apply_baseline_defaults(opts, read_baseline(baseline_path), given)
    except ToolError as exc:
        say(f"note: {exc}; using the default load")
