"""The Vagrantfile gives every host architecture and provider a Debian 12 box built for it.

Vagrant's own loader reads it (tests/vagrant_plan.rb) as on an amd64 and an arm64
host (VAGRANT_HOST_ARCHITECTURE), for each common provider, without the provider
installed and without booting; `vagrant validate` itself runs in
scripts/check_vm.sh. Which box exists for which architecture and provider is a
fact of the box publishers (README: "Developing on macOS or Windows").
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAN = Path(__file__).resolve().parent / "vagrant_plan.rb"
MULTI_ARCH_BOX = "bento/debian-12"   # virtualbox, vmware_desktop, parallels; amd64 and arm64
PROVIDERS = ("virtualbox", "vmware_desktop", "parallels", "libvirt")

needs_vagrant = pytest.mark.skipif(shutil.which("vagrant") is None or shutil.which("ruby") is None,
                                   reason="vagrant is not installed (scripts/setup.sh installs it, as root)")


def plan(provider: str, arch: str | None, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VAGRANT_HOST_ARCHITECTURE"}
    if arch:
        env["VAGRANT_HOST_ARCHITECTURE"] = arch
    # Vagrant keeps machine state in .vagrant/ beside the Vagrantfile unless told otherwise.
    env.update(VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"))
    out = subprocess.run(["ruby", str(PLAN), str(ROOT), provider], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def knows_box_architectures(version: str) -> bool:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= (2, 4)


def test_vagrantfile_parses_and_uses_setup_script():
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (scripts/setup.sh installs it with vagrant)")
    out = subprocess.run(["ruby", "-c", str(ROOT / "Vagrantfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = (ROOT / "Vagrantfile").read_text()
    assert "scripts/setup.sh" in text
    for port, proto in ((1053, "udp"), (1053, "tcp"), (8053, "tcp")):
        assert re.search(rf'guest: {port}, host: {port}, protocol: "{proto}"', text), (port, proto)


@needs_vagrant
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_gets_a_box_of_the_host_architecture(provider, arch, tmp_path):
    p = plan(provider, arch, tmp_path)
    if provider == "libvirt" and arch == "arm64":
        # No Debian 12 arm64 box for libvirt: `vagrant up` says so, and where to go instead.
        assert "libvirt" in p["up"] and "arm64" in p["up"] and "lima/heimdall.yaml" in p["up"], p
        return
    if provider == "libvirt":
        assert p["box"] == "debian/bookworm64", p     # Debian's own box: amd64, virtualbox and libvirt
        assert p["up"] == "ok", p
        return
    assert p["box"] == MULTI_ARCH_BOX, p
    if knows_box_architectures(p["vagrant"]):
        assert p["box_architecture"] == arch and p["up"] == "ok", p
    else:
        # Older Vagrant cannot choose a build by architecture: `vagrant up` refuses it.
        assert p["box_architecture"] is None and ">= 2.4.0" in p["up"], p


@needs_vagrant
def test_without_an_override_the_host_architecture_is_this_machines(tmp_path):
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    if machine is None:
        pytest.skip(f"no Vagrant box for {platform.machine()}")
    p = plan("libvirt", None, tmp_path)
    assert (p["box"] == "debian/bookworm64") == (machine == "amd64"), p
