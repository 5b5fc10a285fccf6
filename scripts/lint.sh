#!/usr/bin/env bash
# The fast checks, run first by .ci/run: ruff (lint and import order) and mypy (types)
# over heimdall/, probes/ and tools/. Seconds, not minutes: a broken change fails here.
# Uses the project venv when it exists, else a light one with the linters and the
# project's dependencies (no apt, no build), so it can run before scripts/setup.sh.
# Exit 0: clean; 1: findings; 3: no venv can be made yet (e.g. Debian's python3-venv
# is not installed): run it again after scripts/setup.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${HEIMDALL_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/ruff" ] || [ ! -x "$VENV/bin/mypy" ]; then
  VENV="$ROOT/.venv-lint"
  if [ ! -x "$VENV/bin/mypy" ]; then
    echo "[lint] creating $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      echo "[lint] python3 cannot make a venv yet (python3-venv): the checks run after setup"
      exit 3
    fi
    deps=$(python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["redis"] + x["quic"] + x["lab"] + x["lint"]))')
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q -c constraints.txt $deps
  fi
fi
echo "[lint] ruff check heimdall probes tools"
"$VENV/bin/ruff" check heimdall probes tools
echo "[lint] mypy"
"$VENV/bin/mypy"
echo "[lint] ok"
