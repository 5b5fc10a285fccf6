"""User/kernel stack symbolisation and an honest note on how deep the stacks are.

BPF walks user stacks by frame pointer. Binaries built without them (the
pyenv CPython here) give stacks one or two frames deep, and Python frames are
never visible to BPF at all; we measure the depth we got and say so.
"""

from __future__ import annotations

import os
import statistics

STACK_ERRORS = {-14: "EFAULT: no user stack", -17: "EEXIST: stack id collision (dropped)",
                -12: "ENOMEM: stack map full (dropped)"}


def stack_error(stack_id: int) -> str:
    return STACK_ERRORS.get(stack_id, f"stack error {stack_id}")


def symbolize(bpf, stack_id: int, pid: int, kernel: bool = False, limit: int = 16) -> list[str]:
    """Frames, innermost first, as 'func+0xoff [module]' or hex when unresolved."""
    if stack_id < 0:
        return [f"[{stack_error(stack_id)}]"]
    try:
        addrs = list(bpf[b"stacks"].walk(stack_id))
    except KeyError:
        return ["[stack evicted]"]
    frames = []
    for addr in addrs[:limit]:
        try:
            if kernel:
                name = bpf.ksym(addr, show_offset=True)
            else:
                name = bpf.sym(addr, pid, show_module=True, show_offset=True)
            text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        except Exception:
            text = "[unknown]"
        frames.append(text if text and not text.startswith("[unknown]") else f"0x{addr:x}")
    return frames


def exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return "?"


def stack_note(pid: int, depths: list[int], exe: str | None = None) -> dict:
    """JSON note: median depth of the stacks we got, and why they may be shallow."""
    exe = exe or exe_name(pid)
    if exe == "?":
        exe = "the target (exited)"
    median = statistics.median(depths) if depths else 0
    note = {"exe": exe, "stacks": len(depths), "median_depth": median, "limited": False, "text": ""}
    is_python = exe.startswith("python") or "python" in exe
    if is_python:
        note["limited"] = True
        note["text"] = ("Python frames are invisible to BPF stack walks, and this CPython appears built "
                        f"without frame pointers (median native stack depth {median}); use "
                        "`heimdall-tools cpuprof` (py-spy) for Python-level stacks")
    elif depths and median <= 2:
        note["limited"] = True
        note["text"] = (f"user stacks are only {median} frame(s) deep: {exe} or the libraries on the stack "
                        "(Debian's libc) lack frame pointers, so the walk stops early")
    return note
