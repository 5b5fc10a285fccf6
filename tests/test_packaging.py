"""The project's one provisioning path holds together: setup, CI, README (the VMs: test_vagrantfile, test_lima)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["scripts/setup.sh", "scripts/test.sh", "scripts/asan.sh", "scripts/check_vm.sh",
                                    "scripts/package.sh", "scripts/pythons.sh", ".ci/run"])
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^    (\S.*)$", readme.split("\n## ", 1)[0], re.M)
    assert len(commands) == 2, "the README opens with exactly two commands"
    test_cmd = commands[1]
    assert "scripts/test.sh" in test_cmd
    assert "scripts/test.sh" in (ROOT / ".ci/run").read_text()


def test_ci_runs_the_sanitizer_build_after_setup_and_before_the_suite():
    text = (ROOT / "scripts/test.sh").read_text()
    assert text.index(" setup.sh\n") < text.index(" asan.sh ") < text.index("-m pytest")


def test_ci_checks_packaging_and_every_python_before_the_long_tests():
    text = (ROOT / "scripts/test.sh").read_text()
    assert (text.index(" setup.sh\n") < text.index(" package.sh ") < text.index(" pythons.sh ")
            < text.index(" asan.sh ") < text.index("-m pytest"))
    assert "export HEIMDALL_REQUIRE_PYTHONS=1" in (ROOT / ".ci/run").read_text()


def test_one_version_and_an_spdx_licence():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_server_installs_without_the_lab():
    """What `pip install heimdall-dns` brings must not pull the lab's plotting and profiling stack."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    server = " ".join(project["dependencies"])
    for lab_only in ("matplotlib", "py-spy", "hdrhistogram", "typer", "rich", "psutil", "redis", "aioquic"):
        assert lab_only not in server
        assert any(lab_only in dep for extra in ("lab", "redis", "quic") for dep in project["optional-dependencies"][extra])


@pytest.mark.parametrize("module", ["heimdall", "tools.cli"])
def test_console_scripts_answer_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()


@pytest.mark.parametrize("module, name", [("heimdall", "heimdall"), ("tools.cli", "heimdall-tools")])
def test_console_scripts_print_their_version(module, name):
    from heimdall import __version__

    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"{name} {__version__}", out.stderr


@pytest.mark.parametrize("args", [["check", "--max-regresion", "10"], ["load", "--duration", "soon"],
                                  ["no-such-command"]])
def test_lab_usage_errors_exit_3_not_2(args):
    """2 means "inconclusive" to CI; a typo must not read as one."""
    out = subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, (out.returncode, out.stderr)
    assert "Error" in out.stderr and "Traceback" not in out.stderr
