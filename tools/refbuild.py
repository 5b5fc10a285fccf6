"""Another commit of this repository, built beside this one: what `check --against REF` runs.

The commit's tree is exported with `git archive` into a temporary folder (the
repository's worktrees and index are never touched) and its C hot path is
built there with this Python, so the two builds differ only in their code.
Heimdall then runs from that folder with PYTHONPATH pointing at it.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tools.errors import EXIT_ENVIRONMENT, ToolError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Build:
    ref: str          # as the user gave it
    commit: str       # full hash
    describe: str     # `git describe --always` of the commit
    path: Path        # the exported tree, importable with PYTHONPATH=path


def git(*args: str, repo: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120)
    except FileNotFoundError:
        raise ToolError("--against needs git, which is not installed", EXIT_ENVIRONMENT) from None


def resolve(ref: str, repo: Path = REPO_ROOT) -> str:
    """The full commit hash of ref, or one line saying why not."""
    if git("rev-parse", "--git-dir", repo=repo).returncode != 0:
        raise ToolError(f"--against needs a git checkout; {repo} is not one", EXIT_ENVIRONMENT)
    proc = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", repo=repo)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ToolError(f"--against {ref}: no such commit in {repo} (a branch, tag, hash or HEAD~N)",
                        EXIT_ENVIRONMENT)
    return proc.stdout.decode().strip()


@contextlib.contextmanager
def built(ref: str, say: Callable[[str], None] = print, repo: Path = REPO_ROOT) -> Iterator[Build]:
    """Export ref's tree and build its C extension; the folder is removed afterwards."""
    commit = resolve(ref, repo)
    describe = git("describe", "--always", commit, repo=repo).stdout.decode().strip() or commit[:12]
    with tempfile.TemporaryDirectory(prefix="heimdall-against-") as tmp:
        path = Path(tmp)
        say(f"building {ref} ({describe}) in {path}")
        _export(commit, path, repo)
        _build_extension(path)
        yield Build(ref, commit, describe, path)


def _export(commit: str, dest: Path, repo: Path) -> None:
    proc = git("archive", "--format=tar", commit, repo=repo)
    if proc.returncode != 0:
        raise ToolError(f"git archive {commit[:12]} failed: {proc.stderr.decode().strip()[:200]}", EXIT_ENVIRONMENT)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    if not (dest / "heimdall" / "__main__.py").is_file():
        raise ToolError(f"commit {commit[:12]} has no Heimdall server (heimdall/__main__.py)", EXIT_ENVIRONMENT)


def _build_extension(path: Path) -> None:
    """The C hot path, in place; a commit without one runs on its Python hot path, as it did then."""
    if not (path / "heimdall" / "_hotpath.c").is_file():
        return
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=path,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not any((path / "heimdall").glob("_hotpath*.so")):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"building the C hot path of {path.name} failed: {last}", EXIT_ENVIRONMENT)
