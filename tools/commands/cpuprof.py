"""`heimdall-tools cpuprof`: flame graph and hottest frames of a Python server (probes/cpuprof.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from tools.commands.options import CMD_HELP, PID_HELP


def cpuprof(
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    duration: float = typer.Option(10.0, "--duration", help="sampling time, seconds (>= 1)"),
    svg: str = typer.Option(..., "--svg", help="flame graph to write; FILE.folded is written beside it"),
    rate: int = typer.Option(100, "--rate", help="samples per second"),
    native: bool = typer.Option(False, "--native", help="also sample native and kernel stacks with BCC"),
    top: int = typer.Option(15, "--top", help="rows in the hottest-frames tables and JSON"),
    idle: bool = typer.Option(False, "--idle", help="include idle (waiting) Python threads"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to this file"),
    command: Optional[List[str]] = typer.Argument(None, help=CMD_HELP),
) -> None:
    """Flame graph of a Python server (py-spy), hottest frames (self and total %), native/kernel with --native."""
    from probes.base import resolve_target
    from probes.cpuprof import run_cpuprof
    from tools.errors import EXIT_INCONCLUSIVE, ToolError

    if top < 1:
        raise ToolError(f"--top must be >= 1 (got {top})", EXIT_INCONCLUSIVE)
    run_cpuprof(resolve_target(pid, command), duration, svg, rate=rate, native=native, top=top,
                idle=idle, json_path=json_path)


def register(app: typer.Typer) -> None:
    app.command("cpuprof")(cpuprof)
