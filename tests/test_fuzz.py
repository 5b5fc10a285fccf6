"""Coverage-guided fuzzing of the query path (fuzz/fuzz_query.py), bounded for CI, and corpus replay.

A longer run: `.venv/bin/python fuzz/fuzz_query.py -max_total_time=600 -artifact_prefix=/tmp/crash- DIR`
after `--write-seeds DIR`. Every crasher found is fixed and kept in tests/corpus/ (first byte: 0 = client
query, 1 = upstream reply), replayed here with the same checks.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "fuzz" / "fuzz_query.py"
CORPUS = Path(__file__).resolve().parent / "corpus"
RUNS = int(os.environ.get("HEIMDALL_FUZZ_RUNS", "20000"))
SECONDS = int(os.environ.get("HEIMDALL_FUZZ_SECONDS", "40"))


@functools.lru_cache(maxsize=1)
def load_target():
    spec = importlib.util.spec_from_file_location("fuzz_query", TARGET)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_query_path_bounded_run_finds_no_crash(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(TARGET), "--write-seeds", str(corpus)], check=True, cwd=ROOT)
    for f in CORPUS.iterdir():  # start from the kept crashers too
        (corpus / f.name).write_bytes(f.read_bytes())
    art = tmp_path / "artifacts"
    art.mkdir()
    proc = subprocess.run([sys.executable, str(TARGET), f"-runs={RUNS}", f"-max_total_time={SECONDS}",
                           f"-artifact_prefix={art}/", str(corpus)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 120)
    tail = proc.stderr[-3000:]
    crashes = list(art.iterdir())
    assert proc.returncode == 0 and not crashes, f"crashers {crashes}:\n{tail}"
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done and int(done.group(1)) >= min(RUNS, 1000), tail
    print(f"\nfuzz_query: {done.group(1)} inputs, no crash")


def corpus_files() -> list[Path]:
    return sorted(CORPUS.iterdir())


def test_corpus_is_not_empty():
    assert len(corpus_files()) >= 10


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_replays_cleanly(path):
    target = load_target()
    target.TestOneInput(path.read_bytes())
