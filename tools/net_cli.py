"""CLI commands for the socket and CPU probes: netprof and cpuprof.

BCC and the probe modules are imported inside the command bodies so that
`heimdall-tools --help` stays fast and works where BCC is missing.
"""

from __future__ import annotations

from typing import List, Optional

import typer

PID_HELP = "pid of a running process to profile"
CMD_HELP = "or: -- COMMAND... to launch a program and profile it"


def netprof(
    pid: Optional[int] = typer.Option(None, "--pid", help=PID_HELP),
    port: Optional[int] = typer.Option(None, "--port", help="UDP port to watch (default: every unconnected UDP socket of the pid)"),
    duration: float = typer.Option(10.0, "--duration", help="measuring window, seconds"),
    warmup: float = typer.Option(0.0, "--warmup", help="seconds after attach before the window opens"),
    queries: Optional[int] = typer.Option(None, "--queries", help="queries answered in the window (adds per-query figures)"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to this file"),
    command: Optional[List[str]] = typer.Argument(None, help=CMD_HELP),
) -> None:
    """UDP receive-queue latency per datagram, socket drops, recv/send/epoll batching and in-server time."""
    from probes.base import resolve_target, run_probe_command
    from probes.netprof import NetProf

    run_probe_command(NetProf, resolve_target(pid, command), duration, warmup, json_path,
                      queries=queries, port=port)


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
    """Add netprof and cpuprof to the heimdall-tools app."""
    app.command("netprof")(netprof)
    app.command("cpuprof")(cpuprof)
