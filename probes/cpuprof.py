"""cpuprof: where the server spends CPU, as a flame graph and a top-N frame table.

Python frames come from py-spy (one `--format raw --subprocesses` run, so a
supervisor's workers are sampled too, also those started during the run; the
SVG is drawn by probes/flamegraph.py from the same folded stacks, merged
over the processes and written beside it as FILE.folded; `processes` has the
samples of each). With --native, BCC samples on-CPU stacks of the same process
tree too (probes/cpuprof.bpf.c)
to show kernel frames (syscalls, the network stack) and native code; the
pyenv CPython here is built without frame pointers, so its user stacks stop
after a frame or two, and the output says so.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from probes.base import Probe, pid_alive, read_comm
from probes.flamegraph import parse_folded, render_svg, to_folded, top_frames
from probes.proctree import proc_comm, render_processes
from tools.errors import EXIT_ENVIRONMENT, EXIT_INCONCLUSIVE, EXIT_TARGET, ToolError
from tools.files import write_json, write_text

SCHEMA = "heimdall.cpuprof/1"
NATIVE_NOTE = ("native user stacks are shallow: this CPython is built without frame pointers, so "
               "the BPF walk past the leaf reads garbage; user stacks are cut at the first unknown "
               "frame (truncated_samples says how often); kernel stacks are complete")
PYSPY_FIX = "install it into the venv: .venv/bin/pip install py-spy (a heimdall-dns dependency)"
PROCESS_FRAME = re.compile(r'^process (\d+):"(.*)"$')   # py-spy --subprocesses: one per process level


class CpuProf(Probe):
    """cpuprof --native: on-CPU stack sampling of a process tree with a software clock perf event."""

    name = "cpuprof"
    bpf_file = "cpuprof.bpf.c"
    schema = SCHEMA
    window_tables = ("cpu_counts",)
    proc_slots = ("samples",)

    def attach_points(self, bpf) -> None:
        from bcc import PerfSWConfig, PerfType

        bpf.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK,
                              fn_name="on_sample", sample_freq=int(self.opts.get("rate", 99)))

    def read(self, queries: int | None) -> dict:
        """Folded native stacks: thread;user frames (outer first);kernel frames_[k]."""
        bpf = self.bpf
        assert bpf is not None  # read() runs inside collect(), after attach()
        stacks_tab = bpf[b"cpu_stacks"]
        stacks: dict[tuple[str, ...], int] = {}
        kernel = truncated = 0
        for key, val in bpf[b"cpu_counts"].items():
            frames = [key.comm.decode(errors="replace") or "?"]
            if key.ustack >= 0:
                user = [bpf.sym(a, key.tgid or self.pid, show_module=True).decode(errors="replace") or "[unknown]"
                        for a in stacks_tab.walk(key.ustack)]      # leaf first
                kept = trusted_user_frames(user)
                truncated += int(val.value) if len(kept) < len(user) else 0
                frames += list(reversed(kept))
            if key.kstack >= 0:
                kernel += int(val.value)
                frames += [bpf.ksym(a).decode(errors="replace") + "_[k]"
                           for a in reversed(list(stacks_tab.walk(key.kstack)))]
            k = tuple(frames)
            stacks[k] = stacks.get(k, 0) + int(val.value)
        return {"stacks": stacks, "kernel_samples": kernel, "truncated_samples": truncated}


def split_processes(stacks: dict[tuple[str, ...], int], root: int) -> tuple[dict[tuple[str, ...], int],
                                                                           dict[int, dict]]:
    """py-spy --subprocesses stacks -> (stacks without the process frames, pid -> {comm, samples}).

    Each stack starts with one `process PID:"cmdline"` frame per level of the
    tree down to the sampled process; a stack without one is the root's."""
    merged: dict[tuple[str, ...], int] = {}
    procs: dict[int, dict] = {}
    for frames, n in stacks.items():
        pid, cmdline, i = root, "", 0
        while i < len(frames) and (m := PROCESS_FRAME.match(frames[i])):
            pid, cmdline, i = int(m.group(1)), m.group(2), i + 1
        rest = frames[i:] or ("[no frame]",)
        merged[rest] = merged.get(rest, 0) + n
        row = procs.setdefault(pid, {"comm": proc_comm(pid) or os.path.basename(cmdline.split(" ")[0]) or "?",
                                     "samples": 0})
        row["samples"] += n
    return merged, dict(sorted(procs.items()))


def trusted_user_frames(leaf_first: list[str]) -> list[str]:
    """The leaf frame and the callers above it up to the first unknown one.

    Without frame pointers the walk past the leaf reads garbage return
    addresses (mostly unsymbolisable), so everything from the first
    "[unknown]" outward is dropped rather than shown as a fake call chain.
    """
    kept = leaf_first[:1]
    for frame in leaf_first[1:]:
        if frame.startswith("[unknown]"):
            break
        kept.append(frame)
    return kept


def find_pyspy() -> str:
    """$HEIMDALL_PYSPY, else py-spy on PATH or beside this interpreter (the venv's bin)."""
    chosen = os.environ.get("HEIMDALL_PYSPY")
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise ToolError(f"py-spy not found at HEIMDALL_PYSPY={chosen}; {PYSPY_FIX}", EXIT_ENVIRONMENT)
        return chosen
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise ToolError(f"py-spy not found; {PYSPY_FIX}", EXIT_ENVIRONMENT)
    return found


def _validate(duration: float, rate: int, svg: str) -> None:
    if duration < 1:
        raise ToolError(f"--duration must be >= 1 second (got {duration})", EXIT_INCONCLUSIVE)
    if not 1 <= rate <= 10000:
        raise ToolError(f"--rate must be 1..10000 Hz (got {rate})", EXIT_INCONCLUSIVE)
    parent = Path(svg).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ToolError(f"cannot write {svg}: {parent} is not a writable directory", EXIT_ENVIRONMENT)


def _run_pyspy(pyspy: str, pid: int, duration: float, rate: int, idle: bool,
               alive) -> tuple[str, str, str]:
    """Record folded stacks; returns (folded text, end reason, py-spy's last stderr line)."""
    fd, raw = tempfile.mkstemp(prefix="cpuprof.", suffix=".folded")
    os.close(fd)
    cmd = [pyspy, "record", "-p", str(pid), "-d", str(int(math.ceil(duration))), "-r", str(rate),
           "-o", raw, "--format", "raw", "--function", "--subprocesses"] + (["--idle"] if idle else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reason = "duration"
    try:
        try:
            _, err = proc.communicate(timeout=duration + 30)
        except KeyboardInterrupt:
            reason = "interrupted"
            proc.send_signal(signal.SIGINT)      # py-spy writes what it has on SIGINT
            _, err = proc.communicate(timeout=30)
        if reason == "duration" and not alive():
            reason = "target-exited"
        text = Path(raw).read_text() if os.path.getsize(raw) else ""
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise ToolError(f"py-spy did not finish within {duration + 30:.0f}s", EXIT_ENVIRONMENT) from None
    finally:
        os.unlink(raw)
    lines = [ln.strip() for ln in (err or "").splitlines() if ln.strip()]
    last = next((ln for ln in lines if ln.startswith("Error:")), lines[-1] if lines else "")
    if "python version" in last:
        last += f" (is pid {pid} a Python process? a pyenv shim's pid is bash: give its child's pid)"
    if proc.returncode != 0 and not text:
        if not alive():
            raise ToolError(f"pid {pid} exited before py-spy recorded a sample", EXIT_TARGET)
        raise ToolError(f"py-spy failed on pid {pid}: {last or 'exit ' + str(proc.returncode)}",
                        EXIT_ENVIRONMENT)
    return text, reason, last


def _native_result(probe: CpuProf, svg: Path, top: int) -> dict:
    res = probe.collect()
    stacks = res.pop("stacks")
    samples = sum(stacks.values())
    nsvg = svg.with_suffix(".native.svg")
    folded = nsvg.with_name(nsvg.name + ".folded")
    write_text(folded, to_folded(stacks))
    write_text(nsvg, render_svg(stacks, f"cpuprof --native pid {probe.pid} ({probe.comm}): on-CPU, "
                                         f"{samples} samples"))
    depth = max((len(k) - 1 - sum(f.endswith('_[k]') for f in k) for k in stacks), default=0)
    return {"samples": samples, "kernel_samples": res["kernel_samples"], "processes": res["processes"],
            "kernel_pct": round(100.0 * res["kernel_samples"] / samples, 2) if samples else 0.0,
            "user_stack_depth_max": depth, "truncated_samples": res["truncated_samples"],
            "top": top_frames(stacks, top),
            "svg": str(nsvg), "folded": str(folded), "lost": res["lost"], "note": NATIVE_NOTE}


def run_cpuprof(target: int | list[str], duration: float, svg: str, rate: int = 100,
                native: bool = False, top: int = 15, idle: bool = False,
                json_path: str | None = None, render: bool = True, console=None) -> dict:
    """The cpuprof command: py-spy flame graph (+ BCC native/kernel stacks), top frames, JSON."""
    _validate(duration, rate, svg)
    pyspy = find_pyspy()
    proc: subprocess.Popen | None = None
    if isinstance(target, list):
        try:
            proc = subprocess.Popen(target)
        except OSError as exc:
            raise ToolError(f"cannot run {target[0]}: {exc.strerror or exc}", EXIT_TARGET) from None
        time.sleep(0.5)   # let the interpreter start before py-spy looks for it
        pid = proc.pid
    else:
        pid = int(target)

    def alive() -> bool:
        return proc.poll() is None if proc is not None else pid_alive(pid)

    if not alive():
        raise ToolError(f"{target[0]} exited at once" if isinstance(target, list) else f"pid {pid} does not exist",
                        EXIT_TARGET)
    comm = read_comm(pid)
    svg_path = Path(svg).resolve()
    probe = CpuProf(pid, rate=rate) if native else None
    try:
        if probe is not None:
            probe.attach()
            probe.open_window()
        started = time.monotonic()
        text, reason, last = _run_pyspy(pyspy, pid, duration, rate, idle, alive)
        elapsed = time.monotonic() - started
        native_res = _native_result(probe, svg_path, top) if probe is not None else None
    finally:
        if probe is not None:
            probe.close()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=5)
    stacks, py_procs = split_processes(parse_folded(text), pid)
    samples = sum(stacks.values())
    folded_path = svg_path.with_name(svg_path.name + ".folded")
    write_text(folded_path, to_folded(stacks))
    write_text(svg_path, render_svg(stacks, f"cpuprof pid {pid} ({comm}): Python stacks (py-spy), "
                                             f"{samples} samples at {rate} Hz"))
    result: dict[str, Any] = {
        "schema": SCHEMA, "tool": "heimdall-tools cpuprof", "pid": pid, "comm": comm,
        "duration_s": round(elapsed, 3),
        "rate_hz": rate, "partial": reason != "duration", "end_reason": reason,
        "idle_included": idle, "svg": str(svg_path), "folded": str(folded_path),
        "python": {"samples": samples, "top": top_frames(stacks, top), "pyspy_message": last},
    }
    if native_res is not None:
        result["native"] = native_res
    result.update(merge_processes(py_procs, native_res["processes"] if native_res else None))
    if json_path:
        write_json(json_path, result)
    if render:
        from rich.console import Console

        render_result(result, console or Console())
    return result


def merge_processes(python: dict[int, dict], native: dict[str, dict] | None) -> dict:
    """Top-level `pids` and `processes`: Python samples (py-spy) and, with --native, on-CPU samples."""
    procs = {pid: dict(row) for pid, row in python.items()}
    for key, row in (native or {}).items():
        entry = procs.setdefault(int(key), {"comm": row.get("comm", "?"), "samples": 0})
        entry["native_samples"] = row["samples"]
    if native is not None:
        for entry in procs.values():
            entry.setdefault("native_samples", 0)
    return {"pids": sorted(procs), "processes": {str(pid): procs[pid] for pid in sorted(procs)}}


def render_result(result: dict, console) -> None:
    """Top frames tables (Python, then native/kernel)."""
    from rich.markup import escape
    from rich.table import Table

    def table(title: str, rows: list[dict]) -> Table:
        t = Table(title=title)
        for col in ("frame", "self %", "total %", "self", "total"):
            t.add_column(col, justify="left" if col == "frame" else "right")
        for r in rows:
            t.add_row(escape(r["frame"]), f"{r['self_pct']:.1f}", f"{r['total_pct']:.1f}",
                      str(r["self_samples"]), str(r["total_samples"]))
        return t

    py = result["python"]
    part = escape(" [partial: " + result["end_reason"] + "]") if result["partial"] else ""
    console.print(table(f"hottest Python frames, pid {result['pid']} ({result['comm']}), "
                        f"{py['samples']} samples{part}", py["top"]))
    if not py["samples"]:
        console.print("no Python samples: the target was idle or is not Python (try --idle)")
    cols = [("Python samples", "samples")] + ([("on-CPU samples", "native_samples")] if "native" in result else [])
    render_processes(result, console, cols)
    if "native" in result:
        nat = result["native"]
        console.print(table(f"hottest native/kernel frames, {nat['samples']} on-CPU samples, "
                            f"{nat['kernel_pct']:.1f}% in kernel", nat["top"]))
        console.print(f"note: {escape(nat['note'])}", highlight=False)
    console.print(f"flame graph: {result['svg']}  folded: {result['folded']}", highlight=False)
