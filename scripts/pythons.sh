#!/usr/bin/env bash
# The server's pure parts and the C hot path on every supported Python (3.11, 3.12, 3.13):
# per version a venv (.venv-py3.X, kept between runs) with only what serving and these tests
# need (pyproject's dependencies and test-core, at constraints.txt's versions), the C
# extension built in place for that interpreter (heimdall/_hotpath.cpython-3X-*.so beside
# the others), and the fast tests, the hot path's property tests among them.
# Interpreters come from PATH or pyenv. A missing one is skipped with a line saying so,
# unless HEIMDALL_REQUIRE_PYTHONS=1 (.ci/run sets it): then it is a failure. The version
# of the project's own .venv is skipped: the whole suite runs on it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSIONS=(3.11 3.12 3.13)
TESTS=(tests/test_wire.py tests/test_wire_props.py tests/test_cache.py tests/test_hotpath.py
       tests/test_hotpath_hardening.py tests/test_ratelimit.py tests/test_httpapi.py tests/test_server_answers.py
       tests/test_sdnotify.py tests/test_listfetch.py tests/test_headerblock_props.py tests/test_http2client.py)

find_python() {
  local v=$1 p
  for p in "$HOME"/.pyenv/versions/"$v".*/bin/"python$v" "python$v"; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
      command -v "$p"; return 0
    fi
  done
  return 1
}

deps() {
  python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["test-core"]))'
}

# The property tests run 400 examples each in the whole suite on the main Python; here 100 on each other one
export HEIMDALL_PROP_EXAMPLES="${HEIMDALL_PROP_EXAMPLES:-100}"

one_version() {  # one_version V PYTHON: its venv, its build, its tests; exit status 1 when any fails
  local v=$1 py=$2 venv="$ROOT/.venv-py$1" started log
  started=$(date +%s)
  log="$venv/pytest.log"
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
  fi
  # shellcheck disable=SC2046
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt "setuptools>=77" $(deps)
  "$venv/bin/python" setup.py -q build_ext --inplace >/dev/null
  "$venv/bin/python" -c 'import heimdall._hotpath' || { echo "[pythons] $v: the C hot path did not build" >&2; return 1; }
  if "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" >"$log" 2>&1; then
    echo "[pythons] $("$venv/bin/python" -V): $(tail -n 1 "$log" | tr -d =) ($(( $(date +%s) - started )) s)"
  else
    tail -n 40 "$log" >&2; echo "[pythons] Python $v: tests failed (whole output: $log)" >&2; return 1
  fi
}

# The versions run side by side (a core each on a 2-core machine: the few timed checks among these tests allow seconds)
failed=0
jobs=()
main=$("$ROOT/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
for v in "${VERSIONS[@]}"; do
  if [ "$v" = "$main" ]; then
    echo "[pythons] Python $v: the whole suite runs on it (.venv)"; continue
  fi
  if ! py=$(find_python "$v"); then
    if [ "${HEIMDALL_REQUIRE_PYTHONS:-0}" = 1 ]; then
      echo "[pythons] Python $v not found (PATH, ~/.pyenv/versions); install it, e.g. pyenv install $v" >&2
      failed=1; continue
    fi
    echo "[pythons] Python $v not found: skipped"; continue
  fi
  one_version "$v" "$py" &
  jobs+=("$!")
done
for job in "${jobs[@]}"; do
  wait "$job" || failed=1
done
exit "$failed"
