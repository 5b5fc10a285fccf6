#!/usr/bin/env bash
# The C hot path (heimdall/_hotpath.c, heimdall/hpack.c) under AddressSanitizer and UBSan, in well under a minute.
#
# Builds the extension a second time with -fsanitize=address,undefined into a
# temporary copy of the package (the normal build is left alone), then runs
# tests/test_hotpath.py, tests/test_hotpath_hardening.py, tests/test_wire_props.py and
# tests/test_headerblock_props.py (the C walks and decoders against their twins) and a bounded sweep of
# the reader (fuzz/fuzz_hotpath.py --sweep) against it. Any sanitizer report
# fails the run: UBSan is built not to recover, and every report also goes to a
# log file that is checked at the end, so one from a child process counts too.
# CPython itself is not instrumented: libasan is preloaded, and PYTHONMALLOC=malloc
# gives every Python object a malloc block of its own, so that a read past an
# object's end (or of a freed one) is caught as well.
#
#   scripts/asan.sh             uses $HEIMDALL_VENV or .venv, and $CC or gcc
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${HEIMDALL_VENV:-$ROOT/.venv}/bin/python"
CC="${CC:-gcc}"
say() { printf '[asan] %s\n' "$*"; }

libasan=$("$CC" -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "[asan] $CC has no libasan.so (install build-essential)" >&2
  exit 1
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/tree" "$TMP/reports"
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g"
say "building heimdall/_hotpath.c with $flags"
(cd "$ROOT" && CC="$CC" CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
  "$PY" setup.py -q build_ext --build-lib "$TMP/lib" --build-temp "$TMP/obj" >"$TMP/build.log" 2>&1) \
  || { cat "$TMP/build.log" >&2; exit 1; }
cp -r "$ROOT/heimdall" "$TMP/tree/"
rm -f "$TMP/tree/heimdall/"*.so
cp "$TMP/lib/heimdall/"_hotpath*.so "$TMP/tree/heimdall/"

reports() {
  if compgen -G "$TMP/reports/*" >/dev/null; then
    echo "[asan] sanitizer reports:" >&2
    cat "$TMP"/reports/* >&2
    return 1
  fi
}

# From the copy's directory, so that `import heimdall` finds the sanitized build first.
cd "$TMP/tree"
export PYTHONPATH="$ROOT" PYTHONMALLOC=malloc LD_PRELOAD="$libasan${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$TMP/reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$TMP/reports/ubsan"
# The property tests run 400 examples each in the suite; under the sanitizers (ten times slower) 100
export HEIMDALL_PROP_EXAMPLES="${HEIMDALL_PROP_EXAMPLES:-100}"
built=$("$PY" -c 'import heimdall._hotpath as h; print(h.__file__)')
case "$built" in "$TMP"/*) ;; *) echo "[asan] imported $built, not the sanitized build" >&2; exit 1 ;; esac

say "tests/test_hotpath.py tests/test_hotpath_hardening.py tests/test_wire_props.py tests/test_headerblock_props.py"
"$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_hotpath.py" "$ROOT/tests/test_hotpath_hardening.py" \
  "$ROOT/tests/test_wire_props.py" "$ROOT/tests/test_headerblock_props.py" \
  || { reports; exit 1; }
say "fuzz/fuzz_hotpath.py --sweep"
"$PY" "$ROOT/fuzz/fuzz_hotpath.py" --sweep --random "${HEIMDALL_ASAN_RANDOM:-300}" || { reports; exit 1; }
reports
say "ok: no sanitizer report"
