"""cpuprof truth target: ~80% of CPU in hot_loop(), ~20% in cold_loop(), measured by itself.

usage: hot_cold.py SECONDS [REPORT_FILE]
Both functions run the same loop body; hot_loop does 4x the iterations, a
count drawn anew each round (a round is about 2.5 ms) so that the rounds never
keep step with a sampler's period (200 Hz is two rounds: in step, every sample
would land at one phase). The CPU seconds spent in each (thread_time around
every call) are written to REPORT_FILE as "hot_s cold_s" about every half
second and at the end, so the file holds the truth even when the target is
killed.
"""
import os
import random
import sys
import time


def hot_loop(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def cold_loop(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def report(path, hot, cold):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{hot} {cold}\n")
    os.replace(tmp, path)


def main():
    end = time.monotonic() + float(sys.argv[1])
    path = sys.argv[2] if len(sys.argv) > 2 else None
    hot = cold = 0.0
    next_report = time.monotonic() + 0.5
    while time.monotonic() < end:
        n = random.randint(8000, 12000)
        t0 = time.thread_time()
        hot_loop(4 * n)
        t1 = time.thread_time()
        cold_loop(n)
        t2 = time.thread_time()
        hot += t1 - t0
        cold += t2 - t1
        if path and time.monotonic() >= next_report:
            report(path, hot, cold)
            next_report += 0.5
    if path:
        report(path, hot, cold)


main()
