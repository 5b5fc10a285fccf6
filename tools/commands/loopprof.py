"""`heimdall-tools loopprof`: event-loop iterations and stalls of one process tree (probes/loopprof.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from tools.commands.options import CMD_HELP, PID_HELP


def loopprof(
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    duration: float = typer.Option(10.0, "--duration", help="measuring window, seconds"),
    threshold_ms: float = typer.Option(10.0, "--threshold-ms", help="an iteration this long or longer is a stall"),
    stacks: bool = typer.Option(True, "--stacks/--no-stacks", help="dump the Python stack of a stall while it runs (py-spy)"),
    max_dumps: int = typer.Option(200, "--max-dumps", help="at most this many py-spy dumps in the window"),
    warmup: float = typer.Option(0.0, "--warmup", help="seconds after attach before the window opens"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to this file"),
    command: Optional[List[str]] = typer.Argument(None, help=CMD_HELP),
) -> None:
    """Event-loop iterations (epoll return to next epoll wait) as a histogram, and every stall: on or off the CPU,
    kernel stack and the Python function that ran."""
    from probes.base import resolve_target, run_probe_command
    from probes.loopprof import LoopProf
    from tools.errors import EXIT_INCONCLUSIVE, ToolError

    if not 0 < threshold_ms <= 60_000:
        raise ToolError(f"--threshold-ms must be > 0 and <= 60000 (got {threshold_ms:g})", EXIT_INCONCLUSIVE)
    if max_dumps < 0:
        raise ToolError(f"--max-dumps must be >= 0 (got {max_dumps})", EXIT_INCONCLUSIVE)
    run_probe_command(LoopProf, resolve_target(pid, command), duration, warmup, json_path,
                      threshold_ms=threshold_ms, stacks=stacks, max_dumps=max_dumps)


def register(app: typer.Typer) -> None:
    app.command("loopprof")(loopprof)
