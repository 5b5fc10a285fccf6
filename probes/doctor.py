"""Preflight checks: can the probes attach here, and if not, what is the fix.

Every probe command runs `ensure_ready(probe)` before loading BPF so that a
missing header or tracefs gives one line with the fix and exit status 3, not a
BCC traceback. `heimdall-tools doctor` prints every check.

Registries below say what each probe needs; add your probe's entries there.
A tracepoint ending in "?" is optional (used when present, never a failure).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from tools.errors import EXIT_ENVIRONMENT, EXIT_TARGET, ToolError

TRACEFS = "/sys/kernel/tracing"
VM_FIX = "probe metrics are unavailable here: run the lab in the Linux VM (`vagrant up`, or Lima: lima/heimdall.yaml)"

# probe name -> tracepoints "category:event" it attaches ("?" suffix: optional)
PROBE_TRACEPOINTS: dict[str, list[str]] = {
    "lockprof": [
        "syscalls:sys_enter_futex", "syscalls:sys_exit_futex",
        "syscalls:sys_enter_futex_waitv?", "syscalls:sys_exit_futex_waitv?",
        "syscalls:sys_enter_futex_wait?", "syscalls:sys_exit_futex_wait?",
        "lock:contention_begin?", "lock:contention_end?",
    ],
    "memprof": [],
    "netprof": [
        "sock:sk_data_ready", "sock:sock_recv_length", "sock:sock_send_length",
        "udp:udp_fail_queue_rcv_skb", "sock:sock_rcvqueue_full",
        *[f"syscalls:sys_{d}_{s}" for s in ("recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg",
                                             "sendmmsg", "epoll_pwait") for d in ("enter", "exit")],
        # no epoll_wait syscall on arm64; epoll_pwait2 since Linux 5.11
        *[f"syscalls:sys_{d}_{s}?" for s in ("epoll_wait", "epoll_pwait2") for d in ("enter", "exit")],
    ],
    "loopprof": ["sched:sched_switch", "syscalls:sys_enter_epoll_pwait", "syscalls:sys_exit_epoll_pwait",
                 *[f"syscalls:sys_{d}_{s}?" for s in ("epoll_wait", "epoll_pwait2") for d in ("enter", "exit")]],
    "offcpu": ["sched:sched_switch", "sched:sched_wakeup", "syscalls:sys_enter_epoll_pwait",
               "syscalls:sys_exit_epoll_pwait",
               *[f"syscalls:sys_{d}_{s}?" for s in ("epoll_wait", "epoll_pwait2") for d in ("enter", "exit")]],
}

# every probe follows its target's process tree with these (probes/common.bpf.h)
TREE_TRACEPOINTS = ["task:task_newtask", "sched:sched_process_exit"]

# probe name -> (library, symbol, required) uprobes it attaches in the target
PROBE_UPROBES: dict[str, list[tuple[str, str, bool]]] = {
    "memprof": [
        ("c", "malloc", True), ("c", "calloc", True), ("c", "realloc", True),
        ("c", "free", True), ("c", "posix_memalign", False), ("c", "aligned_alloc", False),
    ],
}

CAP_PERFMON = 38
CAP_BPF = 39
CAP_SYS_ADMIN = 21


@dataclass
class Check:
    """One preflight result; `fix` is the exact command or step when not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    if os.geteuid() == 0:
        return Check("privileges", True, "running as root")
    caps = _effective_caps()
    have = bool(caps >> CAP_SYS_ADMIN & 1) or (bool(caps >> CAP_BPF & 1) and bool(caps >> CAP_PERFMON & 1))
    if have:
        return Check("privileges", True, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) present")
    return Check("privileges", False, "not root and no CAP_BPF+CAP_PERFMON",
                 f"run as root (sudo heimdall-tools ...) or grant CAP_BPF,CAP_PERFMON; otherwise {VM_FIX}")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return Check("bcc", False, f"cannot import bcc ({exc})",
                     "apt-get install -y bpfcc-tools python3-bpfcc, then run scripts/setup.sh "
                     "(links Debian's bcc into the venv)")
    return Check("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} importable")


def check_headers() -> Check:
    rel = platform.release()
    base = f"/lib/modules/{rel}"
    build = os.path.join(base, "build")
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    fix = (f"apt-get install -y linux-headers-{arch} && ln -sfn /usr/src/linux-headers-<ver>-{arch} {build} "
           f"&& ln -sfn /usr/src/linux-headers-<ver>-common {base}/source (or run scripts/setup.sh)")
    if not os.path.isdir(build):
        return Check("kernel headers", False, f"{build} is missing", fix)
    kconfig = [os.path.join(base, d, "include/linux/kconfig.h") for d in ("build", "source")]
    if not any(os.path.exists(p) for p in kconfig):
        return Check("kernel headers", False, f"include/linux/kconfig.h not under {build} or {base}/source", fix)
    return Check("kernel headers", True, f"{build} -> {os.path.realpath(build)}")


def check_tracefs() -> Check:
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return Check("tracefs", True, f"mounted at {TRACEFS}")
    if os.geteuid() != 0 and os.path.isdir(TRACEFS) and not os.access(TRACEFS, os.R_OK | os.X_OK):
        return Check("tracefs", False, f"{TRACEFS} is not readable by this user",
                     f"run as root; otherwise {VM_FIX}")
    return Check("tracefs", False, f"{TRACEFS}/events does not exist",
                 f"mount -t tracefs nodev {TRACEFS} (or run scripts/setup.sh)")


def tracepoint_exists(tp: str) -> bool:
    cat, _, event = tp.rstrip("?").partition(":")
    return os.path.isdir(os.path.join(TRACEFS, "events", cat, event))


def check_tracepoints(probe: str) -> list[Check]:
    checks = []
    for tp in TREE_TRACEPOINTS + PROBE_TRACEPOINTS.get(probe, []):
        optional = tp.endswith("?")
        name = tp.rstrip("?")
        if tracepoint_exists(name):
            checks.append(Check(f"{probe}: tracepoint {name}", True, "present"))
        elif optional:
            checks.append(Check(f"{probe}: tracepoint {name}", True, "absent (optional, skipped)"))
        else:
            checks.append(Check(f"{probe}: tracepoint {name}", False,
                                f"{TRACEFS}/events/{name.replace(':', '/')} missing",
                                "mount tracefs (scripts/setup.sh); if still missing the kernel lacks "
                                "this tracepoint (CONFIG_FTRACE_SYSCALLS / CONFIG_LOCK_EVENTS)"))
    return checks


def resolve_uprobe(lib: str, sym: str, pid: int | None) -> str:
    """Path of the module that holds `sym`, resolved in the target's maps; raises when absent."""
    from bcc import BPF
    path, _addr = BPF._check_path_symbol(lib.encode(), sym.encode(), 0, pid if pid else -1)
    return path.decode() if isinstance(path, bytes) else str(path)


def check_uprobes(probe: str, pid: int | None) -> list[Check]:
    checks = []
    where = f"pid {pid}" if pid else "the system libc"
    for lib, sym, required in PROBE_UPROBES.get(probe, []):
        name = f"{probe}: uprobe {lib}:{sym}"
        try:
            path = resolve_uprobe(lib, sym, pid)
            checks.append(Check(name, True, f"resolves in {path} ({where})"))
        except Exception as exc:  # bcc raises a bare Exception
            if required:
                checks.append(Check(name, False, f"not resolvable in {where}: {exc}",
                                    "the target must link the system libc dynamically"))
            else:
                checks.append(Check(name, True, f"absent in {where} (optional, skipped)"))
    return checks


def run_checks(probes: list[str] | None = None, pid: int | None = None) -> list[Check]:
    """All checks for the given probes (all registered probes when None)."""
    if platform.system() != "Linux":
        return [Check("platform", False, f"{platform.system()} has no eBPF", VM_FIX)]
    checks = [check_privileges(), check_bcc(), check_headers(), check_tracefs()]
    names = list(probes) if probes is not None else sorted(set(PROBE_TRACEPOINTS) | set(PROBE_UPROBES))
    if checks[3].ok:  # without tracefs every tracepoint would fail the same way
        for probe in names:
            checks.extend(check_tracepoints(probe))
    if checks[1].ok:
        for probe in names:
            checks.extend(check_uprobes(probe, pid))
    return checks


def ensure_ready(probe_name: str, pid: int | None = None) -> None:
    """Raise ToolError(EXIT_ENVIRONMENT) naming every failed check and its fix."""
    if pid is not None and not os.path.exists(f"/proc/{pid}"):
        raise ToolError(f"pid {pid} does not exist", EXIT_TARGET)
    failed = [c for c in run_checks([probe_name], pid) if not c.ok]
    if failed:
        parts = "; ".join(f"{c.name}: {c.detail} -> fix: {c.fix}" for c in failed)
        raise ToolError(f"{probe_name} cannot attach: {parts}", EXIT_ENVIRONMENT)


def doctor_command(json_path: str | None = None) -> int:
    """Print each check with OK/FAIL and its fix; 0 only when every probe can attach."""
    from rich.console import Console

    console = Console(emoji=False, soft_wrap=True)
    checks = run_checks()
    for c in checks:
        mark = "[green]OK  [/]" if c.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {c.name}: {c.detail}", highlight=False)
        if not c.ok and c.fix:
            console.print(f"       fix: {c.fix}", highlight=False)
    ok = all(c.ok for c in checks)
    console.print("all probes can attach" if ok else f"[bold red]probes cannot attach[/]; {VM_FIX}"
                  if os.geteuid() != 0 or platform.system() != "Linux" else "[bold red]probes cannot attach[/]")
    if json_path:
        from tools.files import write_json
        write_json(json_path, {"schema": "heimdall.doctor/1", "ok": ok,
                                      "checks": [c.to_json() for c in checks]})
    return 0 if ok else EXIT_ENVIRONMENT
