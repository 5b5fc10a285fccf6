"""Shared fixtures: a real NSD upstream on loopback, and the probe-test gate."""

from __future__ import annotations

import os
import shutil

import pytest

from tools.nsd import LocalUpstream, free_port  # noqa: F401 - re-exported for tests


@pytest.fixture(scope="session")
def upstream():
    """One NSD serving bench.test. and example.test. for the whole session."""
    with LocalUpstream() as up:
        yield up


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
