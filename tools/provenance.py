"""What produced a result: the commit of the code measured and the machine it ran on.

Every JSON result of bench, check (run.json), baseline create and compare
records `commit` (`git describe --always --dirty` in the checkout the tools
live in) and `fingerprint` (tools/baseline.py), so `heimdall-tools history`
can put runs in commit order and say which machine made each. Outside a git
checkout (an installed wheel) or without git, the commit is None: never an
error, a result is worth keeping without it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """`git describe --always --dirty` of `root`, or None when it is not a checkout or git is missing.

    Only `root` itself counts: an installed copy inside some other repository
    (a venv in a checkout) must not report that repository's commit."""
    if not (root / ".git").exists():  # a directory, or a file in a worktree
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        proc = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def provenance() -> dict[str, Any]:
    """{commit, fingerprint}: the keys every result document carries."""
    from tools.baseline import fingerprint  # tools.baseline imports this module

    return {"commit": git_commit(), "fingerprint": fingerprint()}
