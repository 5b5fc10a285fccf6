"""lockprof's GIL truth: two CPU-bound Python threads contend for the GIL.

Usage: python gil_spin.py SECONDS. Prints "ready <pid>", waits for a line on
stdin (the probe attaches first), spins two threads for SECONDS, prints
"tid <native id>" for each, "elapsed <s>" and "done", then waits for another
line before exiting. With one GIL, each thread waits for it about half the
time, so the GIL's futex (FUTEX_WAIT_BITSET on one address) shows about
SECONDS of total wait across the two threads.
"""

import sys
import threading
import time


def spin(seconds: float, tids: list) -> None:
    tids.append(threading.get_native_id())
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1


def main() -> None:
    seconds = float(sys.argv[1])
    print(f"ready {__import__('os').getpid()}", flush=True)
    sys.stdin.readline()
    tids: list = []
    threads = [threading.Thread(target=spin, args=(seconds, tids)) for _ in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    for tid in tids:
        print(f"tid {tid}")
    print(f"elapsed {elapsed:.3f}\ndone", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
