"""`heimdall-tools baseline create`: measure repeated windows and write a versioned JSON baseline."""

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

baseline_app = typer.Typer(help="Create a JSON baseline for `check`.", no_args_is_help=True)


@baseline_app.command("create")
def baseline_create(
    output: Optional[Path] = typer.Option(None, "--output", help="baseline file (default baselines/<machine kind>.json)"),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help=SCEN_HELP),
    duration: Optional[float] = typer.Option(None, "--duration", help="seconds per window (default 5)"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="unmeasured seconds before each window (default 1)"),
    clients: Optional[int] = typer.Option(None, "--clients", help="concurrent clients (default 20)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="windows per scenario (default 5)"),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    pid: Optional[int] = typer.Option(None, "--pid", help=SERVER_PID_HELP),
    probes: Optional[str] = typer.Option(None, "--probes", help=PROBES_HELP + " (default all)"),
    engine: Optional[str] = typer.Option(None, "--engine", help="load engine: builtin or dnsperf"),
    timeout_ms: Optional[int] = typer.Option(None, "--timeout-ms", help="per-query timeout (default 2000)"),
    reference: bool = typer.Option(True, "--reference/--no-reference",
                                   help="measure each window beside the reference responder and store the "
                                        "timings as ratios to it, so `check` survives a busy machine"),
    instructions: bool = typer.Option(True, "--instructions/--no-instructions", help=INSTR_HELP),
    command: Optional[List[str]] = typer.Argument(None, help=SERVER_CMD_HELP),
) -> None:
    """Measure repeated windows and write a versioned JSON baseline (atomically)."""
    from tools.gate import create_baseline, default_baseline_path

    opts, _ = lab_options(scenarios, duration, warmup, clients, repeats, server, pid, probes or "all",
                           engine, timeout_ms, Path("performance_results"), command, instructions)
    with interruptible():
        create_baseline(opts, output or default_baseline_path(), say=say, reference=reference)


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")
