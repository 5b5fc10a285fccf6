"""loopprof's truth: an asyncio loop blocked on purpose, on and off the CPU.

Usage: python loop_stalls.py SECONDS [uvloop]. Prints "ready <pid>", waits
for a line on stdin (the probe attaches first), then runs an event loop
(asyncio's, or uvloop's with "uvloop") for SECONDS in which
`block_in_sleep` blocks the loop with time.sleep(0.050) every 500 ms and
`spin_on_cpu` spins for 30 ms of this thread's CPU time (time.thread_time)
every 700 ms, 250 ms out of phase so the two never run back to back in one
iteration. Each stall is printed as "<kind> <start CLOCK_MONOTONIC ns> <wall
ms>" (kind sleep or busy; wall: the stall's own measured length, which for
the spin includes any time the machine preempted it), then "loop_tid <tid>"
and "done"; it then waits for another line before exiting.
"""

import asyncio
import os
import sys
import threading
import time

SLEEP_S, SLEEP_EVERY = 0.050, 0.5
SPIN_CPU_S, SPIN_EVERY, SPIN_PHASE = 0.030, 0.7, 0.25


def block_in_sleep(log: list) -> None:
    start = time.monotonic_ns()
    time.sleep(SLEEP_S)
    log.append(("sleep", start, (time.monotonic_ns() - start) / 1e6))


def spin_on_cpu(log: list) -> None:
    start = time.monotonic_ns()
    cpu_end = time.thread_time() + SPIN_CPU_S
    while time.thread_time() < cpu_end:
        pass
    log.append(("busy", start, (time.monotonic_ns() - start) / 1e6))


async def every(period: float, phase: float, until: float, work, log: list) -> None:
    """Run work at phase + k * period (absolute times: no drift) until `until`."""
    loop = asyncio.get_running_loop()
    k = 1
    while True:
        due = phase + k * period
        if due >= until:
            return
        await asyncio.sleep(max(0.0, due - loop.time()))
        work(log)
        k += 1


async def run(seconds: float, log: list) -> None:
    t0 = asyncio.get_running_loop().time()
    await asyncio.gather(every(SLEEP_EVERY, t0, t0 + seconds, block_in_sleep, log),
                         every(SPIN_EVERY, t0 + SPIN_PHASE, t0 + seconds, spin_on_cpu, log))


def main() -> None:
    seconds = float(sys.argv[1])
    if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.readline()
    log: list = []
    asyncio.run(run(seconds, log))
    for kind, start, wall_ms in log:
        print(f"{kind} {start} {wall_ms:.3f}")
    print(f"loop_tid {threading.get_native_id()}\ndone", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
