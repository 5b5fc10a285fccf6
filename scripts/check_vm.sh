#!/usr/bin/env bash
# The development VM definitions, read by their own tools without booting anything
# (CI machines have no hardware virtualisation). Seconds; scripts/test.sh runs it
# after setup, before the test suite.
#
#   Vagrantfile         `vagrant validate` as on an amd64 and an arm64 host: without
#                       provider plugins (provider settings skipped), and with
#                       Debian's vagrant-libvirt plugin (its settings checked too;
#                       on arm64 the `vagrant up` check refuses libvirt instead)
#   lima/heimdall.yaml  `limactl validate` where limactl is installed; otherwise
#                       tests/test_lima.py checks it against Lima's schema
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '[check_vm] %s\n' "$*"; }
skip() { printf '[check_vm] SKIPPED: %s\n' "$*" >&2; }

validate() {  # $1: host architecture, $2: what to say, then extra environment and vagrant arguments
  local arch=$1 what=$2 out; shift 2
  if ! out=$(env VAGRANT_HOST_ARCHITECTURE="$arch" "$@" 2>&1); then
    printf '%s\n' "$out" >&2; echo "[check_vm] FAILED: vagrant validate, $arch host, $what" >&2; exit 1
  fi
  say "Vagrantfile valid for an $arch host, $what"
}

check_vagrantfile() {
  if ! command -v vagrant >/dev/null 2>&1; then
    skip "vagrant is not installed (scripts/setup.sh installs it, as root)"; return
  fi
  local dot; dot=$(mktemp -d)
  export VAGRANT_CWD="$ROOT" VAGRANT_DOTFILE_PATH="$dot" VAGRANT_CHECKPOINT_DISABLE=1
  local libvirt=0
  vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt ' && libvirt=1
  for arch in amd64 arm64; do
    validate "$arch" "no provider plugin" VAGRANT_NO_PLUGINS=1 vagrant validate --ignore-provider
    if [ "$libvirt" = 1 ]; then
      validate "$arch" "libvirt plugin" VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate
    fi
  done
  [ "$libvirt" = 1 ] || skip "vagrant-libvirt is not installed: libvirt settings not checked"
  rm -rf "$dot"
}

check_lima() {
  if command -v limactl >/dev/null 2>&1; then
    limactl validate "$ROOT/lima/heimdall.yaml" && say "lima/heimdall.yaml valid (limactl validate)"
  else
    say "limactl is not installed: tests/test_lima.py checks lima/heimdall.yaml against Lima's schema"
  fi
}

check_vagrantfile
check_lima
