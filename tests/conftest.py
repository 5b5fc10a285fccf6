"""Shared fixtures: a real NSD upstream on loopback, the probe-test gate, Debian's package lists.

Property tests take no deadline: on a shared 2-core machine one stalled example would fail a
test whose property holds (hypothesis's default is 200 ms per example).

A probe test carries the `probes` mark (`requires_bcc` is that mark). It is
skipped with the reason when this machine cannot attach BCC probes (not root,
BCC not importable, tracefs not mounted), unless HEIMDALL_REQUIRE_PROBES=1 (CI
sets it): then any skip of a probe test, for that reason or any other (no gcc,
no bpftool), is a failure, so a broken BCC install cannot leave the suite green.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

import apt_lists
from tools.nsd import LocalUpstream, free_port  # noqa: F401 - re-exported for tests

REQUIRE_PROBES = "HEIMDALL_REQUIRE_PROBES"

settings.register_profile("heimdall", deadline=None)
settings.load_profile("heimdall")


@pytest.fixture(scope="session")
def upstream():
    """One NSD serving bench.test. and example.test. for the whole session."""
    with LocalUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA's server certificate (dns.heimdall.test, 127.0.0.1, ::1) and a CA that did not sign it."""
    from tools.testpki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_unbound(upstream, pki):
    """Unbound in front of the NSD upstream, also serving DoT (.tls_port) and DoH (.https_port)."""
    from tools.peers import UnboundServer

    server, _other = pki
    with UnboundServer(upstream.addr, tls=(str(server.cert), str(server.key))) as ub:
        yield ub


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


def probes_required() -> bool:
    return os.environ.get(REQUIRE_PROBES) == "1"


requires_bcc = pytest.mark.probes
requires_dnsperf = pytest.mark.skipif(shutil.which("dnsperf") is None, reason="dnsperf not installed")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a probe test where BCC cannot attach (the skip becomes a failure when probes are required)."""
    if item.get_closest_marker("probes") is not None:
        reason = bcc_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """With HEIMDALL_REQUIRE_PROBES=1, a skipped probe test is reported as failed, with its reason."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and probes_required() and item.get_closest_marker("probes") is not None \
            and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_PROBES}=1 and this probe test was skipped: {reason}"
