"""Process state for tests that kill things: is a pid gone (or only a zombie left)?"""

from __future__ import annotations


def gone_or_zombie(pid: int) -> bool:
    """True once pid has exited (reaped, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # reaped before or while we read
        return True
