#!/usr/bin/env bash
# Heimdall's one setup script: the README's commands, .ci/run and the Vagrant and
# Lima provisioners all call it, so there is one tested path. Idempotent.
#
#   scripts/setup.sh            system packages (as root on Debian/Ubuntu), BCC
#                               kernel set-up, and the project virtualenv in .venv
#   scripts/setup.sh --print-packages [--arch amd64|arm64]
#                               print the apt packages it installs on that
#                               architecture (default: this machine's), one a line,
#                               and install nothing
#   scripts/setup.sh --print-headers [--arch amd64|arm64]
#                               print where it looks for kernel headers there
#   HEIMDALL_SKIP_APT=1         skip apt-get (packages already there)
#
# Elsewhere (not Linux, not root, no apt) it sets up the Python side only and
# says what it skipped and why: the probes then report "unavailable".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HEIMDALL_VENV:-$ROOT/.venv}"
say() { printf '[setup] %s\n' "$*"; }
skip() { printf '[setup] SKIPPED: %s\n' "$*" >&2; }

# The same on every architecture; each exists in Debian 12 for amd64 and arm64.
COMMON_PACKAGES=(
  # eBPF lab (ENVIRONMENT.md step 1; the kernel headers follow from the architecture)
  bpfcc-tools python3-bpfcc bpftool
  # real DNS peers and clients for tests and benchmarks
  dnsperf nsd unbound dnsmasq-base dnsutils knot-dnsutils redis-server pdns-recursor dnsdist
  # certificates for the encrypted transports' tests (a CA the tests make)
  openssl ca-certificates
  # the gate's instruction counts (callgrind)
  valgrind
  # building the probes' C target programs and the venv
  build-essential python3-venv python3-dev iproute2 procps
  # reading the Vagrantfile for real (scripts/check_vm.sh), with and without a provider plugin
  vagrant vagrant-libvirt
  # systemd-analyze verify of contrib/heimdall.service (scripts/package.sh)
  systemd
)

# Debian architecture (dpkg's name) of this machine.
machine_arch() {
  if command -v dpkg >/dev/null 2>&1; then dpkg --print-architecture; return; fi
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64|arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# Debian's kernel flavour for an architecture: linux-headers-<flavour> is the
# headers metapackage and /usr/src/linux-headers-<ver>-<flavour> its tree.
kernel_flavour() {
  case "$1" in
    amd64|arm64) echo "$1" ;;
    *) return 1 ;;
  esac
}

# A C compiler and libc for the other architecture: the tests build the hot path
# and the probes' target programs for both (tests/test_cross_build.py).
cross_packages() {
  case "$1" in
    amd64) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
    arm64) echo gcc-x86-64-linux-gnu libc6-dev-amd64-cross ;;
  esac
}

# The apt packages for architecture $1, one a line.
apt_packages() {
  printf '%s\n' "${COMMON_PACKAGES[@]}" $(cross_packages "$1")
  local flavour
  if flavour=$(kernel_flavour "$1"); then
    echo "linux-headers-$flavour"
  else
    skip "kernel headers: no Debian kernel flavour known for architecture $1 (amd64, arm64)"
  fi
}

ARCH="$(machine_arch)"
PRINT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --print-packages|--print-headers) PRINT="$1" ;;
    --arch) ARCH="${2:?--arch needs amd64 or arm64}"; shift ;;
    *) echo "usage: $0 [--print-packages|--print-headers] [--arch ARCH]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$PRINT" = --print-packages ]; then apt_packages "$ARCH"; exit 0; fi
if [ "$PRINT" = --print-headers ]; then
  flavour=$(kernel_flavour "$ARCH") || { echo "no kernel flavour for $ARCH" >&2; exit 1; }
  echo "/usr/src/linux-headers-*-$flavour"; exit 0
fi
mapfile -t APT_PACKAGES < <(apt_packages "$ARCH")

is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

install_system_packages() {
  if [ "${HEIMDALL_SKIP_APT:-0}" = 1 ]; then skip "apt-get (HEIMDALL_SKIP_APT=1)"; return; fi
  if [ "$(uname -s)" != Linux ] || ! have apt-get; then
    skip "system packages: not a Debian/Ubuntu Linux; use the Linux VM (vagrant up, or lima/heimdall.yaml) for probes"; return
  fi
  if ! is_root; then skip "system packages: not root (run with sudo)"; return; fi
  local missing=() p exact="linux-headers-$(uname -r)"
  for p in "${APT_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
  export DEBIAN_FRONTEND=noninteractive
  [ ${#missing[@]} -eq 0 ] || apt-get update -qq
  # A Debian kernel (a VM's) has headers of its exact version, e.g. the cloud flavour's.
  if ! installed "$exact" && apt-cache show "$exact" >/dev/null 2>&1; then missing+=("$exact"); fi
  if [ ${#missing[@]} -eq 0 ]; then say "system packages already installed"; return; fi
  say "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packaged daemons must not hold ports or run as services: tests start their own.
  for svc in unbound nsd redis-server pdns-recursor dnsdist; do
    if have systemctl && systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
}

# ENVIRONMENT.md step 2: BCC looks for headers in /lib/modules/$(uname -r)/{build,source}.
link_kernel_headers() {
  [ "$(uname -s)" = Linux ] && is_root || { skip "kernel headers: needs Linux and root"; return; }
  local mod="/lib/modules/$(uname -r)"
  if [ -e "$mod/build/Makefile" ] && [ -e "$mod/source/include/linux/kconfig.h" ]; then say "kernel headers present in $mod/build"; return; fi
  local hdr common flavour
  flavour=$(kernel_flavour "$ARCH") || { skip "kernel headers: no Debian kernel flavour known for $ARCH"; return; }
  hdr=$(ls -d /usr/src/linux-headers-*-"$flavour" 2>/dev/null | sort -V | tail -n 1 || true)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$hdr" ] || [ -z "$common" ]; then
    skip "kernel headers: no /usr/src/linux-headers-*-$flavour (install linux-headers-$flavour)"; return
  fi
  mkdir -p "$mod"
  ln -sfn "$hdr" "$mod/build"
  ln -sfn "$common" "$mod/source"
  say "linked $mod/build -> $hdr"
}

# ENVIRONMENT.md step 3: tracepoints attach only with tracefs mounted.
mount_tracefs() {
  [ "$(uname -s)" = Linux ] && is_root || { skip "tracefs: needs Linux and root"; return; }
  if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null && say "mounted tracefs" || skip "could not mount tracefs"
  fi
  if [ ! -e /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ]; then
    mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
  fi
}

pick_python() {
  # Any CPython >= 3.11 works; BCC's module is pure Python over ctypes.
  for py in "${HEIMDALL_PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$py" ] && have "$py" && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$py"; return; }
  done
  echo "no Python >= 3.11 found" >&2; exit 1
}

make_venv() {
  local py; py=$(pick_python)
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $($py --version)"
    "$py" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  say "installing heimdall (editable) and test dependencies"
  local log; log=$(mktemp)
  if ! "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "[setup] pip install failed" >&2; exit 1
  fi
  rm -f "$log"
  # setup.py builds heimdall/_hotpath.c as an optional extension (pip without a compiler still
  # installs); here build-essential is installed, so a missing module is a real build failure.
  if ! "$VENV/bin/python" -c 'import heimdall._hotpath' 2>/dev/null; then
    echo "[setup] the C hot path (heimdall/_hotpath.c) did not build; see: $VENV/bin/python -m pip install -v -e $ROOT" >&2
    exit 1
  fi
  say "C hot path built (heimdall/_hotpath.c)"
}

# BCC is not on PyPI: expose Debian's pure-Python module to the venv.
link_bcc() {
  local site bcc_dir=/usr/lib/python3/dist-packages/bcc
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if [ -d "$bcc_dir" ]; then
    ln -sfn "$bcc_dir" "$site/bcc"
    "$VENV/bin/python" -c 'import bcc' 2>/dev/null && say "bcc importable from $VENV" || skip "bcc linked but does not import"
  else
    skip "bcc: $bcc_dir missing (python3-bpfcc not installed); probes will report unavailable"
  fi
}

install_system_packages
link_kernel_headers
mount_tracefs
make_venv
link_bcc
say "done: $VENV/bin/heimdall, $VENV/bin/heimdall-tools"
