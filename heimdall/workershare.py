"""What the workers of one server count together: the global rate bucket and the client queries in flight.

HEIMDALL_GLOBAL_QUERIES_PER_SECOND and HEIMDALL_MAX_INFLIGHT are limits on the
server, so with N workers they must hold for the sum of N processes. An
anonymous shared mapping, made by the supervisor before fork, holds them: the
global token bucket (tokens, time of the last refill) and one in-flight count
per worker slot.

There are no locks. A worker writes only its own slot, and the others only
read it (an aligned 8-byte store is seen whole). The global bucket is read,
refilled and written back by whichever worker takes a token, so two workers
doing that in the same instant can take one token twice (a lost update): the
global limit then admits a little more than configured, never less. A
query in flight is checked against the others' slots and then published, so
workers that check in the same instant at the bound each admit one: the bound
is passed by at most one less than the number of workers. Per-client limits
need no sharing: heimdall/steering.py keeps each client in one worker.
"""

from __future__ import annotations

import mmap

TOKENS, LAST, SLOTS = 0, 1, 2  # float64 fields: the global bucket, then one in-flight count per worker


class WorkerShare:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._map = mmap.mmap(-1, 8 * (SLOTS + workers))  # MAP_SHARED | MAP_ANONYMOUS: kept across fork
        self.f = memoryview(self._map).cast("d")

    # --- the global bucket (heimdall/ratelimit.py) ---

    def reset_bucket(self, burst: float, now: float) -> None:
        self.f[TOKENS], self.f[LAST] = burst, now

    def take(self, rate: float, burst: float, now: float) -> bool:
        """One token from the global bucket, refilled at `rate` up to `burst`; False: none left."""
        f = self.f
        tokens = f[TOKENS] + (now - f[LAST]) * rate
        if tokens > burst:
            tokens = burst
        f[LAST] = now
        if tokens < 1.0:
            f[TOKENS] = tokens
            return False
        f[TOKENS] = tokens - 1.0
        return True

    # --- queries in flight (heimdall/pipeline.py) ---

    def publish(self, slot: int, pending: int) -> None:
        self.f[SLOTS + slot] = pending

    def others(self, slot: int) -> int:
        """Client queries the other workers have waiting for the miss path."""
        return int(sum(self.f[SLOTS:]) - self.f[SLOTS + slot])
