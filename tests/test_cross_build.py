"""The C builds for the other architecture too: amd64 hosts compile it for arm64 and back.

The hot path (heimdall/_hotpath.c) and the probes' target programs
(probes/targets/*.c) are compiled with Debian's cross compiler for the other
architecture (scripts/setup.sh installs it), warnings as errors, and the output is
checked to be code for that architecture. The hot path is built against that
architecture's own Python headers (libpython3.X-dev, fetched with apt into a
private folder). Compiled, not run: an x86 machine cannot execute arm64 code.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = sorted((ROOT / "probes" / "targets").glob("*.c"))
# machine architecture -> (other architecture, its GNU triplet, its ELF e_machine)
OTHER = {"amd64": ("arm64", "aarch64-linux-gnu", 0xB7), "arm64": ("amd64", "x86_64-linux-gnu", 0x3E)}


def other_arch() -> tuple[str, str, int]:
    machine = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    if machine not in OTHER:
        pytest.skip(f"no cross build defined from {machine or 'a machine without dpkg'}")
    return OTHER[machine]


def cross_gcc() -> tuple[str, str, int]:
    arch, triplet, elf = other_arch()
    gcc = f"{triplet}-gcc"
    if shutil.which(gcc) is None:
        pytest.skip(f"{gcc} is not installed (scripts/setup.sh installs it, as root)")
    return gcc, arch, elf


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not ELF"
    return int.from_bytes(header[18:20], "little")


def hotpath_flags() -> list[str]:
    """The extension's compile flags, as setup.py gives them."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "extra_compile_args":
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no extra_compile_args")


@pytest.mark.parametrize("source", TARGETS, ids=lambda p: p.stem)
def test_probe_target_builds_for_the_other_architecture(source, tmp_path):
    gcc, arch, elf = cross_gcc()
    out = tmp_path / source.stem
    build = subprocess.run([gcc, "-O1", "-pthread", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert elf_machine(out) == elf, f"{source.name} did not build for {arch}"


@pytest.fixture(scope="module")
def other_python_headers(debian_lists, tmp_path_factory) -> list[str]:
    """-I flags for Debian's Python headers of the other architecture."""
    arch, triplet, _ = other_arch()
    opts = debian_lists(arch)
    folder = tmp_path_factory.mktemp("python-headers")
    package = f"libpython{sys.version_info.major}.{sys.version_info.minor}-dev"
    got = subprocess.run(["apt-get", *opts, "download", package], cwd=folder, capture_output=True, text=True)
    debs = list(folder.glob(f"{package}_*.deb"))
    if got.returncode != 0 or not debs:
        pytest.skip(f"Debian 12 has no {package} for {arch}: {got.stderr[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(folder / "root")], check=True)
    include = folder / "root" / "usr" / "include"
    assert (include / triplet / f"python{sys.version_info.major}.{sys.version_info.minor}" / "pyconfig.h").exists()
    return [f"-I{include / f'python{sys.version_info.major}.{sys.version_info.minor}'}", f"-I{include}"]


@pytest.mark.slow
def test_hotpath_builds_for_the_other_architecture(other_python_headers, tmp_path):
    gcc, arch, elf = cross_gcc()
    out = tmp_path / "_hotpath.so"
    build = subprocess.run([gcc, *hotpath_flags(), "-Werror", "-fPIC", "-shared", *other_python_headers,
                            "-o", str(out), str(ROOT / "heimdall" / "_hotpath.c")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert elf_machine(out) == elf, f"the hot path did not build for {arch}"
