"""CLI commands for the preflight and the lock/memory probes: doctor, lockprof, memprof.

BCC and the probe modules are imported inside the command bodies so that
`heimdall-tools --help` stays fast and works where BCC is missing.
"""

from __future__ import annotations

from typing import List, Optional

import typer

PID_HELP = "pid of a running process to profile"
CMD_HELP = "or: -- COMMAND... to launch a program and profile it"


def doctor(json_path: Optional[str] = typer.Option(None, "--json", help="also write the checks as JSON")) -> None:
    """Check that every probe can attach here; print each check with its fix (exit 3 if not)."""
    from probes.doctor import doctor_command

    raise typer.Exit(doctor_command(json_path))


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

    if top < 1:
        from tools.errors import EXIT_INCONCLUSIVE, ToolError
        raise ToolError(f"--top must be >= 1 (got {top})", EXIT_INCONCLUSIVE)
    run_probe_command(LockProf, resolve_target(pid, command), duration, warmup, json_path,
                      queries=queries, top=top)


def memprof(
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    duration: float = typer.Option(10.0, "--duration", help="measuring window, seconds"),
    sample: int = typer.Option(100, "--sample", help="record the allocating stack of 1 call in N"),
    top: int = typer.Option(10, "--top", help="rows in the top-stacks table and JSON"),
    warmup: float = typer.Option(0.0, "--warmup", help="seconds after attach before the window opens"),
    pymalloc: bool = typer.Option(False, "--pymalloc", help="also probe CPython's PyObject_Malloc layer"),
    overhead: bool = typer.Option(True, "--overhead/--no-overhead", help="measure the probe's per-call cost first (~3 s)"),
    queries: Optional[int] = typer.Option(None, "--queries", help="queries answered in the window (adds per-query figures)"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to this file"),
    command: Optional[List[str]] = typer.Argument(None, help=CMD_HELP),
) -> None:
    """libc malloc/calloc/realloc/free calls, bytes, sizes, sampled stacks and the probe's own cost."""
    from probes.base import resolve_target, run_probe_command
    from probes.memprof import MemProf
    from tools.errors import EXIT_INCONCLUSIVE, ToolError

    if sample < 1 or top < 1:
        raise ToolError("--sample and --top must be >= 1", EXIT_INCONCLUSIVE)
    run_probe_command(MemProf, resolve_target(pid, command), duration, warmup, json_path,
                      queries=queries, sample=sample, top=top, pymalloc=pymalloc,
                      overhead=overhead)


def register(app: typer.Typer) -> None:
    """Add doctor, lockprof and memprof to the heimdall-tools app."""
    app.command("doctor")(doctor)
    app.command("lockprof")(lockprof)
    app.command("memprof")(memprof)
