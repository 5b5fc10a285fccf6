"""The `heimdall-tools` command: one typer app; each command lives in its own module.

Modules register their commands here by importing lazily heavy dependencies
(bcc, matplotlib) inside the command bodies, so `--help` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from tools.errors import ToolError

app = typer.Typer(
    name="heimdall-tools",
    help="Heimdall's performance lab: DNS load, eBPF probes, bench and the regression gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- command registrations (each module owns its command functions) ---
# [registrations]
from tools import load_cmd as _load_cmd, upstream_cmd as _up_cmd; _load_cmd.register(app); _up_cmd.register(app)  # load, upstream
from tools import net_cli as _net_cli; _net_cli.register(app)  # netprof, cpuprof
from tools import probe_cli as _probe_cli; _probe_cli.register(app)  # doctor, lockprof, memprof
from tools import lab_cli as _lab_cli; _lab_cli.register(app)  # bench, baseline create, check
from tools import compare_cli as _compare_cli; _compare_cli.register(app)  # compare


def main() -> None:
    """Entry point: run the app, turning ToolError into one line and an exit status."""
    try:
        app()
    except ToolError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
