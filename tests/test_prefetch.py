"""HEIMDALL_PREFETCH: a name asked for in the last tenth of its TTL is refetched before it expires.

A client asks one name ten times a second for 13 s while the TTL is capped
at 10 s. With prefetch the cache never runs dry: one miss (the first query),
and at least one refetch in the background. Without it the entry expires and
a client query misses again. Counted from the server's own /metrics.
"""

from __future__ import annotations

import time

import pytest

from heimdall_server import HeimdallProcess
from test_http_e2e import free_tcp_port, scrape, total


def ask_for(srv: HeimdallProcess, seconds: float) -> int:
    end, asked = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        assert srv.query("w7.bench.test").answer
        asked += 1
        time.sleep(0.1)
    return asked


def figures(hp: int, answered: int) -> dict:
    deadline = time.monotonic() + 10  # published about once a second
    while True:
        m = scrape(hp)
        if total(m, "heimdall_queries_total") >= answered or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_popular_name_stays_cached_with_prefetch(upstream, prefetch):
    hp = free_tcp_port()
    env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_MAX_TTL": "10",
           "HEIMDALL_PREFETCH": "true" if prefetch else "false"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        m = figures(hp, ask_for(srv, 13))
    misses, prefetches = total(m, "heimdall_cache_misses_total"), total(m, "heimdall_prefetches_total")
    if prefetch:
        assert misses == 1 and prefetches >= 1, (misses, prefetches)
    else:
        assert misses >= 2 and prefetches == 0, (misses, prefetches)
