"""`heimdall-tools upstream start|stop|status`: the local NSD upstream as a background daemon.

Benchmarks on a machine without internet need an authoritative server for
cache-miss and mixed scenarios. `start` runs NSD (tools/nsd.py) detached
in a state directory and prints its HOST:PORT on stdout (so scripts can say
`UP=$(heimdall-tools upstream start)`); `stop` ends exactly that process
(pid and command line checked); `status` asks it a real query.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import typer
from rich.console import Console

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.files import write_json
from tools.nsd import LocalUpstream, wait_for_dns

DEFAULT_DIR = Path("/tmp/heimdall-upstream")
STATE = "state.json"

upstream_app = typer.Typer(help="A local authoritative upstream (NSD with bench.test. and example.test.).",
                           no_args_is_help=True)
err = Console(stderr=True)


def _read_state(workdir: Path) -> dict | None:
    try:
        return json.loads((workdir / STATE).read_text())
    except (OSError, ValueError):
        return None


def _process(state: dict) -> psutil.Process | None:
    """The recorded NSD process, if it is still that process (pid reuse is checked via the config path)."""
    try:
        p = psutil.Process(state["pid"])
        return p if state["conf"] in " ".join(p.cmdline()) else None
    except (psutil.Error, KeyError):
        return None


@upstream_app.command("start")
def start(
    port: int = typer.Option(0, "--port", min=0, max=65535, help="UDP/TCP port (0: a free one)."),
    address: str = typer.Option("127.0.0.1", "--address", help="Loopback address to listen on."),
    workdir: Path = typer.Option(DEFAULT_DIR, "--dir", help="State directory (config, zones, pid, log)."),
) -> None:
    """Start NSD in the background and print its HOST:PORT."""
    state = _read_state(workdir)
    if state and _process(state):
        err.print(f"upstream already running at {state['addr']} (pid {state['pid']})")
        print(state["addr"])
        return
    up = LocalUpstream(port=port, address=address, workdir=workdir, tied=False)
    up.start()
    st = {"pid": up.pid, "addr": up.addr, "conf": str(workdir / "nsd.conf"), "started": time.time()}
    write_json(workdir / STATE, st)
    err.print(f"upstream (nsd) running at {up.addr}, pid {up.pid}, state in {workdir}")
    print(up.addr)


@upstream_app.command("stop")
def stop(workdir: Path = typer.Option(DEFAULT_DIR, "--dir", help="State directory given to start.")) -> None:
    """Stop the NSD that `start` left running."""
    state = _read_state(workdir)
    proc = _process(state) if state else None
    if not state or proc is None:  # no state means no process either
        (workdir / STATE).unlink(missing_ok=True)
        err.print("upstream is not running")
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    (workdir / STATE).unlink(missing_ok=True)
    err.print(f"upstream at {state['addr']} (pid {state['pid']}) stopped")


@upstream_app.command("status")
def status(workdir: Path = typer.Option(DEFAULT_DIR, "--dir", help="State directory given to start.")) -> None:
    """Say whether the upstream runs and answers; exit 3 when it does not."""
    state = _read_state(workdir)
    if not state or _process(state) is None:
        raise ToolError("upstream is not running (heimdall-tools upstream start)", EXIT_ENVIRONMENT)
    host, _, port = state["addr"].rpartition(":")
    wait_for_dns(host, int(port), "x.bench.test.", timeout=2)
    err.print(f"upstream running at {state['addr']} (pid {state['pid']}) and answering")
    print(state["addr"])


def register(app: typer.Typer) -> None:
    app.add_typer(upstream_app, name="upstream")
