"""Helpers for the probe tests: compile the C targets and drive the line protocol.

Targets print "ready <pid>", wait for a line on stdin (so the probe attaches
and opens its window first), do their known work, print "key value" lines
and "done", then wait for another line before exiting.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGETS = REPO / "probes" / "targets"
CLI = [sys.executable, "-m", "tools.cli"]


def compile_target(name: str, outdir: Path, *flags: str) -> Path:
    """gcc probes/targets/<name>.c into outdir; skip the test when gcc is missing."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the probe target programs")
    out = outdir / name
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", *flags, "-o", str(out),
                    str(TARGETS / f"{name}.c")], check=True)
    return out


class Target:
    """A started target program speaking the ready/go/done protocol."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().split()
        assert first and first[0] == "ready", f"target did not start: {first}"
        self.pid = self.proc.pid

    def go(self) -> dict[str, list[str]]:
        """Start the work; return its report as key -> values (keys may repeat)."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        report: dict[str, list[str]] = {}
        for line in self.proc.stdout:
            if line.strip() == "done":
                return report
            key, _, value = line.strip().partition(" ")
            report.setdefault(key, []).append(value)
        raise AssertionError(f"target exited early with {self.proc.wait()}")

    def finish(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("bye\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def profile_target(probe: str, argv: list[str], **opts) -> tuple[dict, dict]:
    """Start a known-truth target, watch it with `probe` ("module:Class", imported here so that
    collecting the tests needs no BCC), let it run, collect: (what the target reported, the result)."""
    import importlib

    module, cls = probe.split(":")
    probe_cls = getattr(importlib.import_module(module), cls)
    target = Target(argv)
    try:
        with probe_cls(target.pid, **opts) as watching:
            watching.open_window()
            report = target.go()
            result = watching.collect()
    finally:
        target.finish()
    return report, result


def dead_pid() -> int:
    """A pid that existed a moment ago and does not now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
