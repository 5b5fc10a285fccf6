"""`heimdall-tools lockprof`: futex waits and kernel lock contention of one process (probes/lockprof.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from tools.commands.options import CMD_HELP, PID_HELP


def lockprof(
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    duration: float = typer.Option(10.0, "--duration", help="measuring window, seconds"),
    top: int = typer.Option(10, "--top", help="rows in the top-locks table and JSON"),
    warmup: float = typer.Option(0.0, "--warmup", help="seconds after attach before the window opens"),
    queries: Optional[int] = typer.Option(None, "--queries", help="queries answered in the window (adds per-query figures)"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to this file"),
    command: Optional[List[str]] = typer.Argument(None, help=CMD_HELP),
) -> None:
    """Futex waits (every wait op, outcome, per thread and address, stacks, wakers) and kernel lock contention."""
    from probes.base import resolve_target, run_probe_command
    from probes.lockprof import LockProf
    from tools.errors import EXIT_INCONCLUSIVE, ToolError

    if top < 1:
        raise ToolError(f"--top must be >= 1 (got {top})", EXIT_INCONCLUSIVE)
    run_probe_command(LockProf, resolve_target(pid, command), duration, warmup, json_path,
                      queries=queries, top=top)


def register(app: typer.Typer) -> None:
    app.command("lockprof")(lockprof)
