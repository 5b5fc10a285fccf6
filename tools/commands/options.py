"""Help texts and helpers several commands share, so each is written once."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Iterator

PID_HELP = "pid of a running process to profile, with all its descendants (a supervisor covers its workers)"
CMD_HELP = "or: -- COMMAND... to launch a program and profile it and its descendants"
SCEN_HELP = "comma list of cache-hit,cache-miss,mixed,high-concurrency,blocking, or all"
SERVER_HELP = "measure this server (HOST:PORT) instead of starting Heimdall + NSD; needs --pid"
SERVER_PID_HELP = "the --server's process id (CPU time, resources and probes attach to it)"
PROBES_HELP = "probe set: comma list of lockprof,memprof,netprof, or all, or none"
SERVER_CMD_HELP = ("or: --server HOST:PORT -- COMMAND...: the lab starts the server that answers there, "
                   "and can count its instructions per query")
INSTR_HELP = ("count each scenario's instructions per query under valgrind's callgrind in a second copy "
              "of the server the lab starts: the figure a busy machine does not move")


def say(msg: str) -> None:
    """Progress lines go to stderr, so stdout carries only the result."""
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C or SIGTERM unwinds normally (probes detach, started servers stop), then one line, exit 3."""
    from tools.errors import EXIT_ENVIRONMENT, ToolError

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        raise ToolError("interrupted: probes detached and started servers stopped; finished windows are kept",
                        EXIT_ENVIRONMENT) from None
    finally:
        signal.signal(signal.SIGTERM, old)


def lab_options(scenarios, duration, warmup, clients, repeats, server, pid, probes, engine, timeout_ms,
                results_dir: Path, command: list[str] | None = None, instructions: bool = True):
    """LabOptions for `baseline create` and `check`, and the names of the options the user gave
    (check takes the others from the baseline)."""
    from tools.lab_adapter import parse_probe_names
    from tools.measure import LabOptions, parse_scenarios

    opts = LabOptions(duration=5.0, warmup=1.0, repeats=5, server=server, pid=pid,
                      results_dir=results_dir, probes=parse_probe_names(probes or "none"),
                      command=list(command) if command else None, instructions=instructions)
    given = set()
    for name, value in (("scenarios", scenarios), ("duration", duration), ("warmup", warmup), ("clients", clients),
                        ("repeats", repeats), ("engine", engine), ("timeout_ms", timeout_ms), ("probes", probes)):
        if value is not None:
            given.add(name)
            if name == "scenarios":
                opts.scenarios = parse_scenarios(value)
            elif name != "probes":
                setattr(opts, name, value)
    return opts, given
