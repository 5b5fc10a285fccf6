"""Per-worker counters: plain ints that the hot paths add to and the metrics read.

Nothing on the query path locks or allocates for counting; the C hot path
adds to `hits_fast`, `udp_wakeups` and `udp_datagrams` by attribute name and
to `hit_labels[entry.lid]` by index. `counting.Counting` turns these into
labelled metrics about once a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heimdall.cache import MAX_LABELS


@dataclass
class Counters:
    queries_udp: int = 0  # UDP queries that reached the pipeline (fast-path hits are in hits_fast)
    queries_tcp: int = 0
    hits_fast: int = 0
    hits: int = 0  # pipeline cache hits
    misses: int = 0
    coalesced: int = 0
    prefetches: int = 0  # popular entries refetched before they expired (HEIMDALL_PREFETCH)
    stale_served: int = 0
    servfail: int = 0
    formerr: int = 0
    notimp: int = 0
    refused: int = 0
    dropped: int = 0
    overload: int = 0  # turned away at HEIMDALL_MAX_INFLIGHT
    inflight_limited: dict[str, int] = field(default_factory=lambda: {"zone": 0, "client": 0})  # inflight.py
    internal_errors: int = 0
    tcp_connections: int = 0
    udp_wakeups: int = 0  # reader callbacks: udp_datagrams / udp_wakeups = batch size
    udp_datagrams: int = 0
    tcp_rejected: int = 0  # refused at a connection limit: no idle connection to close instead
    tcp_evicted: int = 0  # idle connections closed to make room for a new one
    by_qtype: dict[int, int] = field(default_factory=dict)  # pipeline queries only
    by_rcode: dict[int, int] = field(default_factory=dict)  # miss replies
    miss_latency_ms: list[int] = field(default_factory=lambda: [0] * 16)  # log2 buckets of ms
    rate_limited: int = 0
    hit_labels: list[int] = field(default_factory=lambda: [0] * MAX_LABELS)  # fast-path hits by Entry.lid

    @property
    def cache_hits(self) -> int:
        return self.hits_fast + self.hits

    @property
    def queries(self) -> int:
        return self.hits_fast + self.queries_udp + self.queries_tcp
