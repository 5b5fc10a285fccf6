"""Result files of the lab's commands: written with heimdall.atomic, a failure is one ToolError line.

Every JSON result, report and state file goes through here, so there is one
atomic-write path (heimdall/atomic.py) and one wording for a failed write.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from heimdall.atomic import atomic_write_text
from tools.errors import EXIT_ENVIRONMENT, ToolError


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace `path` with `text` in one step, or raise ToolError(EXIT_ENVIRONMENT)."""
    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror or exc}", EXIT_ENVIRONMENT) from None


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """JSON in the data's own key order (results read top-down), indented, trailing newline."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def new_results_dir(base: str | os.PathLike[str], command: str) -> Path:
    """A fresh <base>/<YYYYmmdd-HHMMSS>-<command>[-N] directory, stamped in UTC: runs never overwrite
    each other, and every command's runs sort by time in one folder whatever the machine's time zone."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{command}"
    path = Path(base) / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{n}"
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise ToolError(f"cannot create results directory {path}: {exc.strerror or exc}", EXIT_ENVIRONMENT) from None
    return path
