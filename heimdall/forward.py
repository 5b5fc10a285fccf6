"""Stage 6: forward a miss to the upstreams and build this client's entry from the answer.

The sockets, failover and health rules are the pool's (heimdall/upstream.py);
this stage asks with the client's RD/CD/DO bits and turns the first valid
answer into a cache entry with the configured TTL bounds. An answer whose body
does not build fails over to the next upstream, like no answer at all.
"""

from __future__ import annotations

import time
from typing import Awaitable

from heimdall import wire
from heimdall.cache import build_entry
from heimdall.config import Config
from heimdall.outcome import Fetched, Miss
from heimdall.upstream import UpstreamPool


class Forward:
    def __init__(self, pool: UpstreamPool, config: Config):
        self.pool = pool
        self.config = config

    def fetch(self, miss: Miss, data: bytes) -> Awaitable[Fetched | None]:
        """The entry built from an upstream's answer, or None when no upstream answered validly.

        Returns the pool's own coroutine: a miss awaits one frame fewer."""
        q, cfg = miss.q, self.config

        def build(response: bytes) -> Fetched:
            entry, ttl = build_entry(response, data, q, miss.limit, int(time.monotonic()), cfg.min_ttl,
                                     cfg.max_ttl, cfg.negative_ttl)
            return Fetched(entry, ttl, response)

        return self.pool.query(miss.question, bool(data[2] & wire.RD), bool(data[3] & wire.CD), q.do, build)
