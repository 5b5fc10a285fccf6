"""The life cycle every probe shares: preflight, load, attach, window, collect, detach.

A probe subclass names its BPF C file and the maps its window covers, and
implements `read()` (maps -> JSON-ready dict) and `render()` (rich tables).
The target is a process tree: the pid (or the launched command) and every
process it forks, also after attach (probes/proctree.py, probes/common.bpf.h);
results carry `pids` and per-process figures in `processes` next to the totals.
`run_probe_command` is the CLI flow: `--pid PID` or `-- COMMAND...`, attach,
warm up, open the window for --duration, then detach on Ctrl-C, SIGTERM,
timeout or the target exiting (results then carry `"partial": true`; the
command still exits 0 because the numbers it has are real).

Usage from other tools (bench): `with LockProf(pid) as p: p.open_window();
...load...; result = p.collect(queries=n)`.
"""

from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.proctree import exit_flags, pid_alive, proc_comm, read_procs, reset_procs, seed_targets
from tools.errors import EXIT_ENVIRONMENT, EXIT_INCONCLUSIVE, EXIT_TARGET, ToolError
from tools.files import write_json

if TYPE_CHECKING:
    from bcc import BPF

PROBES_DIR = Path(__file__).resolve().parent
# indices of heimdall_lost in common.bpf.h
LOST_NAMES = ("map_full", "stack_eexist", "stack_enomem", "stack_other", "no_start")


def read_comm(pid: int) -> str:
    return proc_comm(pid) or "?"


_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.M)


def expand_includes(path: Path, seen: set[str] | None = None) -> str:
    """Inline our own `#include "x.bpf.h"` by text: BCC rewrites map calls
    (map.lookup, get_stackid) only in the main source, never in headers."""
    seen = set() if seen is None else seen

    def inline(match: re.Match) -> str:
        name = match.group(1)
        inc = path.parent / name
        if not inc.exists():
            return match.group(0)
        if name in seen:
            return f"/* {name} already included */"
        seen.add(name)
        return expand_includes(inc, seen)

    return _INCLUDE.sub(inline, path.read_text())


def per_query(counts: dict[str, float], queries: int | None) -> dict[str, float] | None:
    """Each count divided by the queries answered in the same window."""
    if not queries:
        return None
    return {k: round(v / queries, 4) for k, v in counts.items()}


class Probe:
    """Base for BCC probes attached to a process tree (the pid and its descendants, by tgid)."""

    name = "probe"
    bpf_file = ""                     # file in probes/, e.g. "lockprof.bpf.c"
    schema = "heimdall.probe/1"
    window_tables: tuple[str, ...] = ()   # maps cleared when the window opens
    proc_slots: tuple[str, ...] = ()      # names of the heimdall_procs counters c[0], c[1], ...

    def __init__(self, pid: int, **opts: Any) -> None:
        self.pid = int(pid)
        self.opts = opts
        self.bpf: BPF | None = None   # set by attach(), cleared by close()
        self.comm = "?"
        self.partial = False
        self.window_start: float | None = None
        self.window_end: float | None = None
        self.seed_lost = 0            # tree members that did not fit in heimdall_targets

    # --- hooks for subclasses -------------------------------------------------
    def cflags(self) -> list[str]:
        """Extra -D flags (e.g. optional tracepoints present on this kernel)."""
        return []

    def attach_points(self, bpf) -> None:
        """Attach uprobes etc.; TRACEPOINT_PROBEs attach themselves on load."""

    def read(self, queries: int | None) -> dict:
        """Read the maps into the probe's part of the JSON."""
        raise NotImplementedError

    def processes(self) -> dict[int, dict]:
        """pid -> per-process figures of the window (comm and the proc_slots counters)."""
        assert self.bpf is not None  # called from collect(), after attach()
        return read_procs(self.bpf, self.proc_slots)

    @classmethod
    def render(cls, result: dict, console) -> None:
        """Print rich tables for a collected result."""
        console.print_json(json.dumps(result))

    # --- life cycle -------------------------------------------------------------
    def bpf_text(self) -> str:
        return expand_includes(PROBES_DIR / self.bpf_file)

    def attach(self) -> None:
        """Preflight, load the BPF program, watch the pid's tree, attach; clear errors."""
        from probes.doctor import ensure_ready

        if not pid_alive(self.pid):
            raise ToolError(f"pid {self.pid} does not exist", EXIT_TARGET)
        ensure_ready(self.name, self.pid)
        from bcc import BPF

        self.comm = read_comm(self.pid)
        flags = [f"-I{PROBES_DIR}", "-Wno-unused-function"] + exit_flags() + self.cflags()
        try:
            self.bpf = BPF(text=self.bpf_text().encode(), cflags=flags)
            self.seed_lost = seed_targets(self.bpf, self.pid)   # forks are followed from here on
            self.attach_points(self.bpf)
        except ToolError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            if not pid_alive(self.pid):
                raise ToolError(f"pid {self.pid} exited while attaching", EXIT_TARGET) from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ToolError(f"{self.name} cannot attach to pid {self.pid}: {first} "
                            "(run `heimdall-tools doctor`)", EXIT_ENVIRONMENT) from None
        self._warm_symbols()

    def _warm_symbols(self) -> None:
        """Load the target's symbol maps now, so stacks resolve even if it exits later."""
        bpf = self.bpf
        if bpf is None:  # attach() sets it just before calling this
            return
        try:
            bpf.sym(0, self.pid)
        except Exception:
            pass

    def table(self, name: str):
        """A BPF map by name (bytes, as BCC wants them)."""
        assert self.bpf is not None, f"{self.name}: table() before attach()"
        return self.bpf[name.encode()]

    def _ctl(self, value: int) -> None:
        ctl = self.table("heimdall_ctl")
        ctl[ctl.Key(0)] = ctl.Leaf(value)

    def open_window(self) -> None:
        """Prepare the window and start it at once."""
        self.prepare_window()
        self.start_window()

    def prepare_window(self) -> None:
        """Clear the window's maps and start per-process figures (the slow part, tens of ms: a
        window that must open at an instant is prepared before it and started at it)."""
        if self.bpf is None:
            raise ToolError(f"{self.name}: window before attach()", EXIT_ENVIRONMENT)
        self.seed_lost = seed_targets(self.bpf, self.pid)
        for name in (*self.window_tables, "heimdall_lost"):
            self.table(name).clear()
        reset_procs(self.bpf)

    def start_window(self) -> None:
        """Set the in-kernel enabled flag: events count from now."""
        self._ctl(1)
        self.window_start = time.monotonic()
        self.window_end = None

    def close_window(self) -> None:
        if self.bpf is not None and self.window_end is None and self.window_start is not None:
            self._ctl(0)
            self.window_end = time.monotonic()

    @property
    def duration_s(self) -> float:
        if self.window_start is None:
            return 0.0
        end = self.window_end if self.window_end is not None else time.monotonic()
        return end - self.window_start

    def read_lost(self) -> dict[str, int]:
        table = self.table("heimdall_lost")
        vals = [int(table[table.Key(i)].value) for i in range(len(LOST_NAMES))]
        vals[0] += self.seed_lost
        return dict(zip(LOST_NAMES, vals))

    def collect(self, queries: int | None = None) -> dict:
        """Close the window and return the JSON-ready result."""
        if self.bpf is None or self.window_start is None:
            raise ToolError(f"{self.name}: collect() needs attach() and open_window()", EXIT_ENVIRONMENT)
        self.close_window()
        if not pid_alive(self.pid):
            self.partial = True
        else:
            self.comm = read_comm(self.pid)  # a launched command may have exec'd since attach
        import bcc

        result: dict[str, Any] = {
            "schema": self.schema,
            "tool": f"heimdall-tools {self.name}",
            "pid": self.pid,
            "comm": self.comm,
            "duration_s": round(self.duration_s, 4),
            "partial": self.partial,
            "queries": queries,
            "kernel": platform.release(),
            "bcc": getattr(bcc, "__version__", "?"),
        }
        result.update(self.read(queries))
        procs = self.processes()
        result["pids"] = sorted(procs)
        result["processes"] = {str(pid): procs[pid] for pid in sorted(procs)}
        result["lost"] = self.read_lost()
        return result

    def close(self) -> None:
        """Detach everything; safe to call twice."""
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            try:
                bpf.cleanup()
            except Exception:
                pass

    def __enter__(self) -> "Probe":
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_target(pid: int | None, command: list[str] | None) -> int | list[str]:
    """--pid or -- COMMAND..., exactly one of them (usage error, exit 2, otherwise)."""
    if pid is not None and command:
        raise ToolError("give either --pid PID or -- COMMAND..., not both", EXIT_INCONCLUSIVE)
    if pid is None and not command:
        raise ToolError("give --pid PID or -- COMMAND... to launch and profile", EXIT_INCONCLUSIVE)
    if pid is not None and pid <= 0:
        raise ToolError(f"pid {pid} does not exist", EXIT_TARGET)
    return pid if pid is not None else list(command or [])


class _Stopper:
    """Turns SIGINT/SIGTERM into a flag during the window (restored afterwards)."""

    def __init__(self) -> None:
        self.signalled: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stopper":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave handlers alone
                pass
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.signalled = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _launch(command: list[str]) -> subprocess.Popen:
    try:
        return subprocess.Popen(command)
    except OSError as exc:
        raise ToolError(f"cannot run {command[0]}: {exc.strerror or exc}", EXIT_TARGET) from None


def _stop_child(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_probe_command(probe_cls: type[Probe], target: int | list[str], duration: float,
                      warmup: float = 0.0, json_path: str | None = None, render: bool = True,
                      queries: int | None = None, console=None, **opts: Any) -> dict:
    """The common CLI flow; returns the result (also written to json_path, rendered)."""
    if duration <= 0:
        raise ToolError(f"--duration must be > 0 (got {duration})", EXIT_INCONCLUSIVE)
    if warmup < 0:
        raise ToolError(f"--warmup must be >= 0 (got {warmup})", EXIT_INCONCLUSIVE)
    proc: subprocess.Popen | None = None
    if isinstance(target, list):
        proc = _launch(target)
        pid = proc.pid
    else:
        pid = int(target)

    def alive() -> bool:
        return proc.poll() is None if proc is not None else pid_alive(pid)

    probe = probe_cls(pid, **opts)
    try:
        with _Stopper() as stopper:
            if proc is not None and proc.poll() is not None:
                assert isinstance(target, list)  # proc exists only for a launched command
                raise ToolError(f"{target[0]} exited (status {proc.returncode}) before the probe attached",
                                EXIT_TARGET)
            attach_start = time.monotonic()
            probe.attach()
            attach_s = time.monotonic() - attach_start
            deadline = time.monotonic() + warmup
            while time.monotonic() < deadline and stopper.signalled is None:
                if not alive():
                    raise ToolError(f"pid {pid} exited before the window opened", EXIT_TARGET)
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if not alive():
                raise ToolError(f"pid {pid} exited before the window opened", EXIT_TARGET)
            probe.open_window()
            print(f"{probe.name}: attached to pid {pid} in {attach_s:.2f} s; window open for {duration:g} s",
                  file=sys.stderr, flush=True)
            end = time.monotonic() + duration
            reason = "duration"
            while (left := end - time.monotonic()) > 0:
                if stopper.signalled is not None:
                    reason = "interrupted"
                    break
                if not alive():
                    reason = "target-exited"
                    break
                time.sleep(min(0.05, left))
            probe.partial = reason != "duration"
            result = probe.collect(queries)
            result["end_reason"] = reason
            result["attach_s"] = round(attach_s, 3)
    finally:
        probe.close()
        _stop_child(proc)
    if json_path:
        write_json(json_path, result)
    if render:
        from rich.console import Console

        probe_cls.render(result, console or Console(emoji=False, width=None if sys.stdout.isatty() else 160))
    return result
