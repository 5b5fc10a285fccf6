#!/usr/bin/env bash
# The README's test command: the fast checks (ruff, mypy: scripts/lint.sh), then set
# up (idempotent), the packaging checks (scripts/package.sh: unit file, wheel) and the
# fast tests on every supported Python (scripts/pythons.sh), the C hot path under
# sanitizers (scripts/asan.sh), the VM
# definitions read with their own tools (scripts/check_vm.sh: seconds), and the whole
# suite. Extra arguments go to pytest (e.g. scripts/test.sh -k cache -x).
# Each stage ends with a line giving its time ("[test] stage setup: 41 s").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

stage() {  # stage NAME SCRIPT: run scripts/SCRIPT and say how long it took
  local started=$SECONDS status=0
  bash "$ROOT/scripts/$2" || status=$?
  echo "[test] stage $1: $(( SECONDS - started )) s"
  return "$status"
}

lint=0
stage lint lint.sh || lint=$?
[ "$lint" -eq 0 ] || [ "$lint" -eq 3 ] || exit "$lint"
stage setup setup.sh
[ "$lint" -eq 0 ] || stage lint lint.sh   # deferred until setup made the venv
stage package package.sh   # unit file verified, wheel installed and run (about 15 s)
stage pythons pythons.sh   # the fast tests on Python 3.11, 3.12 and 3.13 (about 2 min)
stage asan asan.sh         # the C hot path under AddressSanitizer and UBSan (about 20 s)
stage vm check_vm.sh
cd "$ROOT"
exec "${HEIMDALL_VENV:-$ROOT/.venv}/bin/python" -m pytest tests --durations=5 "$@"
