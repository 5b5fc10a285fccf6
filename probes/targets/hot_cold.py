"""cpuprof truth target: ~80% of CPU in hot_loop, ~20% in cold_loop, measured by itself.

usage: hot_cold.py SECONDS [REPORT_FILE]; writes "hot_s cold_s" CPU seconds on exit.
"""
import sys, time

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

def main():
    end = time.monotonic() + float(sys.argv[1])
    hot = cold = 0.0
    while time.monotonic() < end:
        t0 = time.thread_time(); hot_loop(40000); t1 = time.thread_time(); cold_loop(10000); t2 = time.thread_time()
        hot += t1 - t0; cold += t2 - t1
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as fh:
            fh.write(f"{hot} {cold}\n")

main()
