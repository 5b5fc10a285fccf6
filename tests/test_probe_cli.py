"""The probe commands' errors, with BCC hidden: a dead pid, bad options and missing BCC need no kernel probe.

Each command runs with a `bcc` module on PYTHONPATH that fails to import, as on
a machine where BCC broke: the pid check (exit 4) and the option checks (exit 2)
come first, and an attach without BCC is exit 3 naming the fix, one line each.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from probe_targets import CLI, REPO, dead_pid

PROBES = ("lockprof", "memprof", "netprof", "loopprof", "offcpu")


@pytest.fixture(scope="module")
def no_bcc_env(tmp_path_factory) -> dict[str, str]:
    """The environment with a `bcc` that raises ImportError ahead of the real one."""
    shim = tmp_path_factory.mktemp("no_bcc")
    (shim / "bcc.py").write_text('raise ImportError("BCC hidden by the test")\n')
    path = os.pathsep.join([str(shim), str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def assert_one_line(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_the_shim_really_hides_bcc(no_bcc_env):
    proc = subprocess.run([*CLI[:1], "-c", "import bcc"], capture_output=True, text=True, env=no_bcc_env)
    assert proc.returncode == 1 and "BCC hidden by the test" in proc.stderr


@pytest.mark.parametrize("probe", PROBES)
def test_pid_that_does_not_exist_exits_4(no_bcc_env, probe):
    assert_one_line(run(no_bcc_env, probe, "--pid", str(dead_pid()), "--duration", "1"), 4, "does not exist")


@pytest.mark.parametrize("args, needle", [
    (["lockprof", "--pid", "1", "--duration", "0"], "--duration"),
    (["lockprof", "--duration", "1"], "--pid"),                                   # neither pid nor command
    (["lockprof", "--pid", "1", "--duration", "1", "--", "true"], "--pid"),      # both
    (["memprof", "--pid", "1", "--sample", "0", "--duration", "1"], "--sample"),
    (["memprof", "--pid", "1", "--outstanding", "--live-max", "0", "--duration", "1"], "--live-max"),
    (["netprof", "--pid", "1", "--port", "70000", "--duration", "1"], "--port"),
    (["loopprof", "--pid", "1", "--threshold-ms", "0", "--duration", "1"], "--threshold-ms"),
    (["loopprof", "--pid", "1", "--threshold-ms", "-5", "--duration", "1"], "--threshold-ms"),
    (["loopprof", "--duration", "1"], "--pid"),
    (["offcpu", "--pid", "1", "--top", "0", "--duration", "1"], "--top"),
    (["offcpu", "--pid", "1", "--duration", "-1"], "--duration"),
])
def test_bad_options_exit_2(no_bcc_env, args, needle):
    assert_one_line(run(no_bcc_env, *args), 2, needle)


@pytest.mark.parametrize("probe", PROBES)
def test_attaching_without_bcc_exits_3_with_the_fix(no_bcc_env, probe):
    proc = run(no_bcc_env, probe, "--pid", str(os.getpid()), "--duration", "1")
    assert_one_line(proc, 3, "cannot import bcc")
    assert "scripts/setup.sh" in proc.stderr


def test_doctor_without_bcc_exits_3_naming_it(no_bcc_env, tmp_path: Path):
    proc = run(no_bcc_env, "doctor", "--json", str(tmp_path / "d.json"))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "FAIL bcc: cannot import bcc" in proc.stdout, proc.stdout
