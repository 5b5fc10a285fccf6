"""scripts/setup.sh installs the same tested set on amd64 (Intel) and arm64 (Apple Silicon VMs).

The script is asked what it would install for each architecture (`--print-packages
--arch`), and the answer is checked against Debian 12's own package lists for that
architecture, fetched with apt into a private folder (tests/apt_lists.py): every
name exists there and the whole set resolves, dependencies included, from an
empty system (apt-get -s). No VM is needed: this machine cannot boot one.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path

import pytest

import apt_lists

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"
ARCHES = ("amd64", "arm64")


def setup_says(*args: str) -> list[str]:
    out = subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("arch", ARCHES)
def test_setup_picks_the_headers_of_the_architecture(arch):
    packages = setup_says("--print-packages", "--arch", arch)
    headers = [p for p in packages if p.startswith("linux-headers-")]
    assert headers == [f"linux-headers-{arch}"]
    assert setup_says("--print-headers", "--arch", arch) == [f"/usr/src/linux-headers-*-{arch}"]


@pytest.mark.parametrize("arch, cross", [("amd64", "gcc-aarch64-linux-gnu"), ("arm64", "gcc-x86-64-linux-gnu")])
def test_setup_installs_a_compiler_for_the_other_architecture(arch, cross):
    assert cross in setup_says("--print-packages", "--arch", arch)


def test_setup_lists_the_same_packages_on_both_but_headers_and_cross_compiler():
    def own(arch: str) -> set[str]:
        return {p for p in setup_says("--print-packages", "--arch", arch)
                if not p.startswith(("linux-headers-", "gcc-", "libc6-dev-"))}
    assert own("amd64") == own("arm64")


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian machine (no dpkg)")
def test_setup_defaults_to_this_machines_architecture():
    machine = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert setup_says("--print-packages") == setup_says("--print-packages", "--arch", machine)


def test_setup_refuses_an_unknown_option():
    out = subprocess.run(["bash", str(SETUP), "--arch"], capture_output=True, text=True)
    assert out.returncode != 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_every_package_exists_in_debian_for_the_architecture(debian_lists, arch):
    packages = setup_says("--print-packages", "--arch", arch)
    found = apt_lists.candidates(debian_lists(arch), packages)
    assert not [p for p, version in found.items() if version is None], f"missing on {arch}: {found}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_the_whole_set_installs_on_an_empty_debian_of_the_architecture(debian_lists, arch):
    packages = setup_says("--print-packages", "--arch", arch)
    out = subprocess.run(["apt-get", *debian_lists(arch), "-s", "-q", "install", "--no-install-recommends",
                          *packages], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    installed = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("Inst ")]
    assert set(packages) <= set(installed)
    assert any(f"[{arch}]" in line for line in out.stdout.splitlines() if line.startswith("Inst "))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_the_header_package_fills_the_folder_setup_links(debian_lists, arch):
    """linux-headers-<arch> depends on linux-headers-<ver>-<arch>, whose tree is /usr/src/<that name>."""
    out = subprocess.run(["apt-cache", *debian_lists(arch), "depends", f"linux-headers-{arch}"],
                         capture_output=True, text=True, check=True).stdout
    trees = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Depends:")]
    (glob,) = setup_says("--print-headers", "--arch", arch)
    assert any(fnmatch.fnmatch(f"/usr/src/{t}", glob) for t in trees), (trees, glob)
