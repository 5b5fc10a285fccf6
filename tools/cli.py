"""The `heimdall-tools` command: one typer app; each command lives in tools/commands/<name>.py.

Command modules import heavy dependencies (bcc, matplotlib) inside the
command bodies, so `--help` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from tools.commands import baseline, bench, check, compare, cpuprof, doctor, load, lockprof, memprof, netprof, upstream
from tools.errors import ToolError

app = typer.Typer(
    name="heimdall-tools",
    help="Heimdall's performance lab: DNS load, eBPF probes, bench and the regression gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# in the order `--help` lists them (typer puts the groups, upstream and baseline, last)
for _command in (load, upstream, netprof, cpuprof, doctor, lockprof, memprof, bench, baseline, check, compare):
    _command.register(app)


def main() -> None:
    """Entry point: run the app, turning ToolError into one line and an exit status."""
    try:
        app()
    except ToolError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
