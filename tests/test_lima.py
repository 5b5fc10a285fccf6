"""lima/heimdall.yaml is a valid Lima template that gives the same VM as the Vagrantfile.

`limactl validate` runs in scripts/check_vm.sh where limactl is installed; here
the template is checked against a schema written from Lima's definition
(tests/lima_schema.py), and for what Heimdall needs of it: Debian 12 for both
architectures, the checkout mounted and provisioned by scripts/setup.sh, and the
DNS and metrics ports forwarded like the Vagrantfile's.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest

from heimdall.config import load_config
from lima_schema import SCHEMA

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "lima" / "heimdall.yaml"


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.safe_load(TEMPLATE.read_text())


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_template_matches_limas_schema(template):
    assert schema_errors(template) == []


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.update(portForward=d.pop("portForwards")), "portForward"),          # misspelt field
    (lambda d: d["portForwards"][0].update(proto="sctp"), "portForwards/0/proto"),  # not a Lima protocol
    (lambda d: d["images"][0].update(arch="arm64"), "images/0/arch"),              # Debian's name, not Lima's
    (lambda d: d["provision"][0].update(mode="root"), "provision/0/mode"),
    (lambda d: d["mounts"][0].pop("location"), "mounts/0"),
])
def test_schema_rejects_what_lima_would(template, mutate, where):
    doc = copy.deepcopy(template)
    mutate(doc)
    errors = schema_errors(doc)
    assert errors and any(e.startswith(where) or (where.isidentifier() and where in e) for e in errors), errors


def test_debian_12_for_both_architectures(template):
    images = {image["arch"]: image["location"] for image in template["images"]}
    assert set(images) == {"x86_64", "aarch64"}
    assert "bookworm" in images["x86_64"] and "debian-12" in images["x86_64"] and "amd64" in images["x86_64"]
    assert "bookworm" in images["aarch64"] and "debian-12" in images["aarch64"] and "arm64" in images["aarch64"]


def test_checkout_is_mounted_writable_and_set_up_by_setup_sh(template):
    (mount,) = template["mounts"]
    assert mount["location"] == "{{.Param.checkout}}" and "checkout" in template["param"]
    assert mount["writable"] is True
    # Lima's own rules (pkg/limayaml/validate.go): a host path absolute or under ~, a guest path not a system one
    assert template["param"]["checkout"].startswith(("/", "~/"))
    point = mount["mountPoint"]
    assert point.startswith("/") and point not in ("/", "/bin", "/dev", "/etc", "/home", "/opt", "/sbin", "/tmp",
                                                   "/usr", "/var")
    (system,) = [p for p in template["provision"] if p["mode"] == "system"]
    assert f"bash {point}/scripts/setup.sh" in system["script"]
    assert "HEIMDALL_VENV=/opt/heimdall-venv" in system["script"]   # as the Vagrant provisioner
    assert "mount -t tracefs" in system["script"]


def test_scripts_are_bash_that_parses(template, tmp_path):
    scripts = [p["script"] for p in template["provision"]] + [p["script"] for p in template["probes"]]
    for i, script in enumerate(scripts):
        assert script.startswith("#!/bin/bash\n")
        path = tmp_path / f"script{i}.sh"
        path.write_text(script)
        out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def test_forwards_dns_and_metrics_like_the_vagrantfile(template):
    lima = {(f["guestPort"], f["hostPort"], f.get("proto", "tcp")) for f in template["portForwards"]}
    vagrant = {(int(g), int(h), p) for g, h, p in re.findall(
        r'forwarded_port", guest: (\d+), host: (\d+), protocol: "(\w+)"', (ROOT / "Vagrantfile").read_text())}
    metrics = load_config([], environ={}).http_bind_addr
    assert metrics is not None
    assert lima == vagrant == {(1053, 1053, "udp"), (1053, 1053, "tcp"), (metrics.port, metrics.port, "tcp")}


def test_udp_forwards_ask_for_a_lima_that_has_them(template):
    """Lima forwards UDP with its gRPC forwarder, the default since 1.1.0."""
    assert any(f.get("proto") == "udp" for f in template["portForwards"])
    version = tuple(int(x) for x in template["minimumLimaVersion"].split("."))
    assert version >= (1, 1, 0)
