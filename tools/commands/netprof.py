"""`heimdall-tools netprof`: UDP receive-queue latency, drops and socket syscalls (probes/netprof.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from tools.commands.options import CMD_HELP, PID_HELP


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


def register(app: typer.Typer) -> None:
    app.command("netprof")(netprof)
