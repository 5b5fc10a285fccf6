#!/usr/bin/env bash
# Packaging checks, run by scripts/test.sh before the long tests (about a minute):
#  1. contrib/heimdall.service passes `systemd-analyze verify`. verify insists that the
#     ExecStart binary exists, so a copy with ExecStart pointed at this checkout's
#     heimdall is verified; nothing else in the file changes.
#  2. A wheel built from this tree installs into a clean venv without the lab's extras;
#     there `heimdall --version`, `heimdall-tools --version` and `import heimdall._hotpath`
#     work, a lab command names the extra to install, and the install size is printed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HEIMDALL_VENV:-$ROOT/.venv}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "[package] $*"; }
fail() { echo "[package] $*" >&2; exit 1; }

site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

verify_unit() {
  command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (Debian package systemd)"
  sed "s|^ExecStart=/usr/local/bin/heimdall |ExecStart=$VENV/bin/heimdall |" "$ROOT/contrib/heimdall.service" \
    > "$work/heimdall.service"
  grep -q "^ExecStart=$VENV/bin/heimdall serve" "$work/heimdall.service" || fail "contrib/heimdall.service: ExecStart moved"
  systemd-analyze verify "$work/heimdall.service" || fail "contrib/heimdall.service does not verify"
  say "contrib/heimdall.service: systemd-analyze verify ok"
}

install_wheel() {
  "$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/dist" "$ROOT" >/dev/null
  local wheel; wheel=$(ls "$work"/dist/heimdall_dns-*.whl)
  "$VENV/bin/python" -m venv "$work/venv"
  empty_mb=$(du -sm "$(site_of "$work/venv/bin/python")" | cut -f1)
  "$work/venv/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" "$wheel"
  say "built and installed $(basename "$wheel")"
}

check_installed() {
  local bin="$work/venv/bin" version out
  version=$(cd "$work" && "$bin/python" -c 'import heimdall; print(heimdall.__version__)')
  [ "$("$bin/heimdall" --version)" = "heimdall $version" ] || fail "heimdall --version"
  [ "$("$bin/heimdall-tools" --version)" = "heimdall-tools $version" ] || fail "heimdall-tools --version"
  (cd "$work" && "$bin/python" -c 'import heimdall._hotpath') || fail "the wheel has no C hot path"
  if out=$("$bin/heimdall-tools" load 2>&1); then fail "heimdall-tools load ran without the lab extra"; fi
  case "$out" in *"heimdall-dns[lab]"*) ;; *) fail "heimdall-tools without the lab extra said: $out" ;; esac
  local added=$(( $(du -sm "$(site_of "$bin/python")" | cut -f1) - empty_mb ))
  say "heimdall $version from the wheel: versions, C hot path, lab hint ok; the server's install adds $added MB to a new venv"
}

verify_unit
install_wheel
check_installed
