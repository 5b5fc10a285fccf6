#!/usr/bin/env bash
# The lab's main job (the README's first command):
#   set up (scripts/setup.sh, idempotent), start Heimdall and an NSD upstream on
#   loopback, run `heimdall-tools check --max-regression 10` against the
#   committed baseline for this machine kind, and print where the report is.
#
#   scripts/lab.sh                       # the default check (about 3-4 minutes on 2 cores)
#   scripts/lab.sh --scenarios cache-hit # extra arguments go to `heimdall-tools check`
#   MAX_REGRESSION=5 scripts/lab.sh      # a tighter gate
#   HEIMDALL_BASELINE=baselines/x.json scripts/lab.sh
#
# Exit status is check's: 0 pass, 1 regression, 2 inconclusive, 3 environment
# or input error (no baseline for this machine kind, probes unavailable, ...).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HEIMDALL_VENV:-$ROOT/.venv}"
RESULTS="${HEIMDALL_RESULTS_DIR:-$ROOT/performance_results}"

bash "$ROOT/scripts/setup.sh" || { echo "[lab] setup failed" >&2; exit 3; }
cd "$ROOT"

args=(check --max-regression "${MAX_REGRESSION:-10}" --results-dir "$RESULTS")
if [ -n "${HEIMDALL_BASELINE:-}" ]; then args+=(--baseline "$HEIMDALL_BASELINE"); fi

echo "[lab] heimdall-tools ${args[*]} $*"
"$VENV/bin/heimdall-tools" "${args[@]}" "$@"
rc=$?

latest=$(ls -1td "$RESULTS"/*-check 2>/dev/null | head -n 1)
if [ -n "$latest" ] && [ "$rc" -ne 3 ]; then
  echo "[lab] report: $latest/performance_report.md"
  echo "[lab] verdicts: $latest/check_report.md (this run as a baseline-format file: $latest/run.json)"
fi
case "$rc" in
  0) echo "[lab] PASS" ;;
  1) echo "[lab] REGRESSION" ;;
  2) echo "[lab] INCONCLUSIVE (too noisy to tell; rerun on a quieter machine)" ;;
  3) echo "[lab] ENVIRONMENT/INPUT ERROR (see the error line above; no baseline for this machine kind?" \
          "create one with: $VENV/bin/heimdall-tools baseline create)" ;;
  *) echo "[lab] exit $rc" ;;
esac
exit "$rc"
