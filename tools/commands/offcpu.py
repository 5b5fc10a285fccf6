"""`heimdall-tools offcpu`: off-CPU time per thread and kernel reason of one process tree (probes/offcpu.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from tools.commands.options import CMD_HELP, PID_HELP


def _writable(path: str | None) -> None:
    from tools.errors import EXIT_ENVIRONMENT, ToolError

    if path:
        parent = Path(path).resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ToolError(f"cannot write {path}: {parent} is not a writable directory", EXIT_ENVIRONMENT)


def offcpu(
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    duration: float = typer.Option(10.0, "--duration", help="measuring window, seconds"),
    top: int = typer.Option(15, "--top", help="rows in the top-reasons table and JSON"),
    folded: Optional[str] = typer.Option(None, "--folded", help="write folded stacks (microseconds off the CPU)"),
    svg: Optional[str] = typer.Option(None, "--svg", help="draw the folded stacks as a flame graph"),
    warmup: float = typer.Option(0.0, "--warmup", help="seconds after attach before the window opens"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to this file"),
    command: Optional[List[str]] = typer.Argument(None, help=CMD_HELP),
) -> None:
    """Time off the CPU per thread, state (preempted/asleep) and kernel stack; idle epoll waits apart."""
    from probes.base import resolve_target, run_probe_command
    from probes.offcpu import OffCpu, write_flame
    from tools.errors import EXIT_INCONCLUSIVE, ToolError

    if top < 1:
        raise ToolError(f"--top must be >= 1 (got {top})", EXIT_INCONCLUSIVE)
    _writable(folded)
    _writable(svg)
    result = run_probe_command(OffCpu, resolve_target(pid, command), duration, warmup, json_path, top=top)
    write_flame(result, folded, svg)


def register(app: typer.Typer) -> None:
    app.command("offcpu")(offcpu)
