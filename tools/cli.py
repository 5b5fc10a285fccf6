"""The `heimdall-tools` command: one typer app; each command lives in tools/commands/<name>.py.

Command modules import heavy dependencies (bcc, matplotlib) inside the
command bodies, so `--help` stays fast. Exit statuses are a contract CI reads
(tools/errors.py): a usage error (unknown option, bad value) is 3, like any
other input error, so that 2 always means "inconclusive".
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

try:  # typer vendors click from 0.2x on; older typer depends on click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, UsageError  # type: ignore[no-redef]

from heimdall import __version__
from tools.commands import (
    baseline,
    bench,
    check,
    compare,
    cpuprof,
    doctor,
    history,
    load,
    lockprof,
    loopprof,
    memprof,
    netprof,
    offcpu,
    upstream,
)
from tools.errors import EXIT_USAGE, ToolError

app = typer.Typer(
    name="heimdall-tools",
    help="Heimdall's performance lab: DNS load, eBPF probes, bench and the regression gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def show_version(value: bool) -> None:
    if value:
        print(f"heimdall-tools {__version__}")
        raise typer.Exit(0)


@app.callback()
def tools_options(
    version: Optional[bool] = typer.Option(None, "--version", is_eager=True, callback=show_version,
                                           help="print the version and exit"),
) -> None:
    """Heimdall's performance lab: DNS load, eBPF probes, bench and the regression gate."""


# in the order `--help` lists them (typer puts the groups, upstream and baseline, last)
for _command in (load, upstream, netprof, cpuprof, doctor, lockprof, memprof, loopprof, offcpu, bench, baseline, check,
                 compare, history):
    _command.register(app)


def main() -> None:
    """Entry point: run the app; a ToolError or a usage error is one message and its exit status."""
    try:
        code = app(standalone_mode=False)
    except ToolError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt: as click says and exits in standalone mode
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
