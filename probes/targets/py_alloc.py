"""memprof's CPython-layer truth: exactly N new objects from PyObject_Malloc.

Usage: python py_alloc.py N. Prints "ready <pid>", waits for a line on stdin,
creates N plain `object()`s kept alive in a list (each is one PyObject_Malloc
of 16 bytes; itertools.repeat avoids allocating loop ints), prints
"objects N" and "done", then waits for another line before exiting.
"""

import itertools
import os
import sys


def main() -> None:
    n = int(sys.argv[1])
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.readline()
    keep = [object() for _ in itertools.repeat(None, n)]
    print(f"objects {len(keep)}\ndone", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
