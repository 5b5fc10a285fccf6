"""`heimdall-tools memprof`: libc allocations of one process and the probe's own cost (probes/memprof.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from tools.commands.options import CMD_HELP, PID_HELP


def memprof(
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    duration: float = typer.Option(10.0, "--duration", help="measuring window, seconds"),
    sample: int = typer.Option(100, "--sample", help="record the allocating stack of 1 call in N"),
    top: int = typer.Option(10, "--top", help="rows in the top-stacks table and JSON"),
    warmup: float = typer.Option(0.0, "--warmup", help="seconds after attach before the window opens"),
    pymalloc: bool = typer.Option(False, "--pymalloc", help="also probe CPython's PyObject_Malloc layer"),
    overhead: bool = typer.Option(True, "--overhead/--no-overhead", help="measure the probe's per-call cost first (~3 s)"),
    outstanding: bool = typer.Option(False, "--outstanding",
                                     help="also track blocks not freed by the window's end, and their growth"),
    live_max: int = typer.Option(131072, "--live-max", help="--outstanding: blocks tracked at once (map size)"),
    queries: Optional[int] = typer.Option(None, "--queries", help="queries answered in the window (adds per-query figures)"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to this file"),
    command: Optional[List[str]] = typer.Argument(None, help=CMD_HELP),
) -> None:
    """libc malloc/calloc/realloc/free calls, bytes, sizes, sampled stacks and the probe's own cost;
    with --outstanding the blocks still allocated at the window's end, by stack and size, and their growth."""
    from probes.base import resolve_target, run_probe_command
    from probes.memprof import MemProf
    from tools.errors import EXIT_INCONCLUSIVE, ToolError

    if sample < 1 or top < 1:
        raise ToolError("--sample and --top must be >= 1", EXIT_INCONCLUSIVE)
    if not 1 <= live_max <= 4_194_304:
        raise ToolError(f"--live-max must be between 1 and 4194304 (got {live_max})", EXIT_INCONCLUSIVE)
    run_probe_command(MemProf, resolve_target(pid, command), duration, warmup, json_path,
                      queries=queries, sample=sample, top=top, pymalloc=pymalloc,
                      overhead=overhead, outstanding=outstanding, live_max=live_max)


def register(app: typer.Typer) -> None:
    app.command("memprof")(memprof)
