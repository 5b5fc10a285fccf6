"""Shared fixtures: a real NSD upstream on loopback, the probe-test gate, Debian's package lists."""

from __future__ import annotations

import os
import shutil

import pytest

import apt_lists
from tools.nsd import LocalUpstream, free_port  # noqa: F401 - re-exported for tests


@pytest.fixture(scope="session")
def upstream():
    """One NSD serving bench.test. and example.test. for the whole session."""
    with LocalUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def debian_lists(tmp_path_factory):
    """arch -> apt options reading Debian's package lists for it (tests/apt_lists.py), fetched once a run."""
    fetched: dict[str, list[str] | RuntimeError] = {}

    def lists(arch: str) -> list[str]:
        if shutil.which("apt-get") is None:
            pytest.skip("apt-get is not here: not a Debian machine")
        if arch not in fetched:
            try:
                fetched[arch] = apt_lists.fetch(arch, tmp_path_factory.mktemp(f"apt-{arch}"))
            except RuntimeError as exc:
                fetched[arch] = exc
        got = fetched[arch]
        if isinstance(got, RuntimeError):
            pytest.skip(f"Debian's {arch} package lists cannot be fetched here: {got}")
        return got

    return lists


def bcc_unavailable_reason() -> str | None:
    """Why probe tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "probe tests need root (or CAP_BPF+CAP_PERFMON)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC's Python module is not importable (run scripts/setup.sh)"
    if not os.path.exists("/sys/kernel/tracing/events"):
        return "tracefs is not mounted (run scripts/setup.sh)"
    return None


requires_bcc = pytest.mark.skipif(bcc_unavailable_reason() is not None,
                                  reason=bcc_unavailable_reason() or "")
requires_dnsperf = pytest.mark.skipif(shutil.which("dnsperf") is None, reason="dnsperf not installed")
