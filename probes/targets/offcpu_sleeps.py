"""offcpu's truth: one thread asleep N x T ms, one idle in epoll_wait that must not count.

Usage: python offcpu_sleeps.py N T_MS. Prints "ready <pid>", waits for a
line on stdin (the probe attaches first), then runs two threads: `sleeper`
calls time.sleep(T_MS / 1000) N times (clock_nanosleep), `idler` waits in
epoll_wait on an epoll set with nothing in it, in 100 ms waits, until the
sleeper is done. Prints "sleeper_tid <tid>", "idler_tid <tid>",
"slept_ms <the sleeper's measured time inside time.sleep>", "idle_ms
<the idler's measured time inside epoll.poll>" and "done", then waits for
another line before exiting.
"""

import os
import select
import sys
import threading
import time


def sleeper(n: int, t_s: float, out: dict, done: threading.Event) -> None:
    out["sleeper_tid"] = threading.get_native_id()
    slept = 0
    for _ in range(n):
        start = time.monotonic_ns()
        time.sleep(t_s)
        slept += time.monotonic_ns() - start
    out["slept_ms"] = slept / 1e6
    done.set()


def idler(out: dict, done: threading.Event) -> None:
    out["idler_tid"] = threading.get_native_id()
    ep = select.epoll()
    idle = 0
    while not done.is_set():
        start = time.monotonic_ns()
        ep.poll(0.1)
        idle += time.monotonic_ns() - start
    ep.close()
    out["idle_ms"] = idle / 1e6


def main() -> None:
    n, t_s = int(sys.argv[1]), float(sys.argv[2]) / 1000
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.readline()
    out: dict = {}
    done = threading.Event()
    threads = [threading.Thread(target=sleeper, args=(n, t_s, out, done), name="sleeper"),
               threading.Thread(target=idler, args=(out, done), name="idler")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key in ("sleeper_tid", "idler_tid", "slept_ms", "idle_ms"):
        print(f"{key} {out[key]}")
    print("done", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
