"""Process state for tests that kill things: is a pid gone (or only a zombie left), which children
a supervisor has, and waiting for a condition to hold."""

from __future__ import annotations

import time

import psutil


def gone_or_zombie(pid: int) -> bool:
    """True once pid has exited (reaped, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # reaped before or while we read
        return True


def children(pid: int) -> set[int]:
    """The pids of pid's direct children (a supervisor's workers)."""
    return {c.pid for c in psutil.Process(pid).children()}


def wait_for(cond, timeout: float = 10.0, poll: float = 0.05) -> bool:
    """True as soon as cond() holds, False after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return False
