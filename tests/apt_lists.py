"""Debian's package lists for any architecture, read with apt into a private folder.

This machine's apt knows its own architecture only. To ask what exists for another
one, apt-get update runs against the same Debian sources this machine uses, with
APT::Architecture set and every state and cache folder private: the machine's
dpkg and apt configuration stay untouched, and the archive's signatures are
checked as for any update.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def debian_sources() -> list[tuple[str, str, str]]:
    """(repository URI, suite, component) of each Debian source this machine's apt has."""
    out = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE) $(COMPONENT)",
                          "Identifier: Packages", "Origin: Debian"],
                         capture_output=True, text=True, check=True).stdout
    return sorted({tuple(line.split()) for line in out.splitlines() if len(line.split()) == 3})  # type: ignore[misc]


def apt_options(arch: str, folder: Path) -> list[str]:
    """apt-get/apt-cache options that read the private lists for arch in folder."""
    return ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
            "-o", f"Dir::State::Lists={folder / 'lists'}", "-o", f"Dir::Cache={folder / 'cache'}",
            "-o", f"Dir::Etc::SourceList={folder / 'sources.list'}", "-o", f"Dir::Etc::SourceParts={folder / 'none'}",
            "-o", f"Dir::Etc::PreferencesParts={folder / 'none'}", "-o", "Dir::State::status=/dev/null",
            "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1"]


def fetch(arch: str, folder: Path) -> list[str]:
    """Download Debian's package lists for arch into folder; return the options that read them.

    Raises RuntimeError (with apt's message) when they cannot be fetched."""
    sources = debian_sources()
    if not sources:
        raise RuntimeError("this machine's apt has no Debian source (apt-get indextargets 'Origin: Debian')")
    signed = f" signed-by={KEYRING}" if KEYRING.exists() else ""
    for sub in ("lists/partial", "cache/archives/partial", "none"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "sources.list").write_text(
        "".join(f"deb [arch={arch}{signed}] {uri} {suite} {comp}\n" for uri, suite, comp in sources))
    opts = apt_options(arch, folder)
    out = subprocess.run(["apt-get", *opts, "-q", "update"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LC_ALL": "C"})
    if out.returncode != 0 or re.search(r"^(W|E): Failed to fetch", out.stdout + out.stderr, re.M):
        raise RuntimeError(f"apt-get update for {arch} failed: {(out.stdout + out.stderr)[-1500:]}")
    return opts


def candidates(opts: list[str], names: list[str]) -> dict[str, str | None]:
    """Each name's candidate version in the lists opts read (None: no such package)."""
    out = subprocess.run(["apt-cache", *opts, "policy", *names], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    found: dict[str, str | None] = dict.fromkeys(names)
    current = None
    for line in out.splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            current = line[:-1].split(":")[0]
        elif current in found and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            found[current] = None if version == "(none)" else version
    return found
