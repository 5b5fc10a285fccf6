"""A parent whose child does the work: the truth for probes that follow a process tree.

Usage: python fork_exec.py PROGRAM [ARGS...]. Prints "ready <pid>", waits
for a line on stdin (so the probe attaches to this parent first), then starts
PROGRAM ARGS as its child (fork and exec, sharing stdin and stdout: a target
such as malloc_n or mutex_wait then speaks its own ready/go/done protocol),
waits for it and exits with its status. SIGTERM stops the child too.
"""

import os
import signal
import subprocess
import sys


def read_line() -> bytes:
    """One line from stdin, byte by byte, so nothing meant for the child is read ahead."""
    out = b""
    while not out.endswith(b"\n"):
        ch = os.read(0, 1)
        if not ch:
            break
        out += ch
    return out


def main() -> int:
    print(f"ready {os.getpid()}", flush=True)
    read_line()
    child = subprocess.Popen(sys.argv[1:])
    stopped = []

    def stop(_signum, _frame):     # the main thread's wait() below reaps it
        stopped.append(True)
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    status = child.wait()
    return 0 if stopped else max(status, 0)


if __name__ == "__main__":
    sys.exit(main())
