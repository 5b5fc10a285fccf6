"""The metrics observer: what /metrics, /stats and /health report for one worker.

The pipeline tells it every reply it sends (`observe`: a labelled count and a
duration); the hot path only adds to a per-label list (`hit_labels[entry.lid]`)
and times each batch (`time_hits`). `refresh()` turns the worker's plain-int
counters into one `metrics.Stats` about once a second, or when the HTTP API
asks with one worker.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from typing import TYPE_CHECKING, Sequence

from heimdall import metrics, wire
from heimdall.cache import LABEL_KEYS
from heimdall.httpapi import Health
from heimdall.metrics import QUERY_BUCKETS
from heimdall.outcome import How
from heimdall.transport import Transport, label

if TYPE_CHECKING:
    from heimdall.blocking import Blocking
    from heimdall.querylog import QueryLog
    from heimdall.ratelimit import RateLimiter
    from heimdall.server import DnsServer


class Counting:
    def __init__(self, server: "DnsServer", blocking: "Blocking | None", limiter: "RateLimiter | None",
                 qlog: "QueryLog | None", group_stages: "Sequence[Blocking | None]" = ()):
        self.server = server
        self.blocking = blocking  # the stages and observers whose own counters are reported too
        self.group_stages = [g for g in group_stages if g is not None]  # client groups' blocking stages
        self.retired_blocked = 0  # answered by group stages a re-read config file replaced
        self.limiter = limiter
        self.qlog = qlog
        self.mstats = metrics.Stats()
        self.slow: defaultdict[tuple[str, int, int], int] = defaultdict(int)  # pipeline replies by label

    def set_group_stages(self, stages: "Sequence[Blocking]") -> None:
        """New client groups: the old stages' answers stay in the blocked total."""
        self.retired_blocked += sum(g.blocked for g in self.group_stages)
        self.group_stages = list(stages)

    def observe(self, data: bytes, reply: bytes, client: object, transport: Transport, seconds: float,
                how: How) -> None:
        """A labelled count and a duration: misses in the miss histogram, the rest in the hit one."""
        rcode = reply[3] & wire.RCODE_MASK if len(reply) > 3 else 0
        qtype = wire.reply_question(reply)[1]
        self.slow[(label(transport), qtype, rcode)] += 1
        m = self.mstats
        i = bisect_left(QUERY_BUCKETS, seconds)
        if how.miss:
            m.miss_counts[i] += 1
            m.miss_sum += seconds
        else:
            m.hit_counts[i] += 1
            m.hit_sum += seconds

    def upstream_observe(self, up, result: str, seconds: float) -> None:
        self.mstats.record_upstream(up.label, result, seconds)

    def refresh(self, m: metrics.Stats) -> None:
        """Copy the worker's plain-int counters into the metrics Stats."""
        srv = self.server
        st = srv.stats
        queries: defaultdict[tuple[str, int, int], int] = defaultdict(int, self.slow)
        blocked_fast = 0
        for lid, n in enumerate(st.hit_labels):
            if n:
                qtype, rcode, blocked = LABEL_KEYS[lid]
                queries[("udp", qtype, rcode)] += n
                if blocked:
                    blocked_fast += n
        m.queries = queries
        m.cache_hits = st.cache_hits - blocked_fast
        m.cache_misses = st.misses
        m.cache_evictions = srv.cache.evictions
        m.cache_entries = len(srv.cache)
        m.rate_limited = st.rate_limited
        for pool in srv.pools:
            for up in pool.servers:
                m.upstream_healthy[up.label] = up.fails == 0
        b = self.blocking
        m.blocked = ((b.blocked if b is not None else 0) + sum(g.blocked for g in self.group_stages) + blocked_fast
                     + self.retired_blocked)
        m.blocklist_entries = b.manager.current.entries if b is not None else 0  # also while paused
        m.counters["blocklist_reloads"] = b.reloads if b is not None else 0
        m.counters["blocked_cname_cloaking"] = b.cloaked if b is not None else 0
        m.counters["prefetches"] = st.prefetches
        m.counters["cache_not_admitted"] = srv.cache.not_admitted
        m.counters["tcp_connections"] = st.tcp_connections
        m.counters["tcp_rejected"] = st.tcp_rejected
        m.counters["tcp_evicted"] = st.tcp_evicted
        m.counters["inflight_overload"] = st.overload
        m.counters["inflight_limited_zone"] = st.inflight_limited["zone"]
        m.counters["inflight_limited_client"] = st.inflight_limited["client"]
        m.lists = b.list_figures() if b is not None else {}
        if self.limiter is not None:
            m.counters["rate_limit_buckets_evicted"] = self.limiter.evicted
        if self.qlog is not None:
            m.counters["query_log_dropped"] = self.qlog.dropped
        if srv.shared is not None:
            r = srv.shared.redis.stats()
            for name in ("hits", "misses", "errors", "garbage"):
                m.counters[f"redis_{name}"] = r[name]
            m.redis_hist = metrics.Hist(tuple(r["latency_bounds"]), list(r["latency_counts"]), r["latency_sum"])
            m.redis_state = r["state"]

    def live_snapshot(self) -> metrics.Snapshot:
        self.refresh(self.mstats)
        return self.mstats.snapshot()

    def health(self) -> Health:
        srv = self.server
        ups = [up for pool in srv.pools for up in pool.servers]
        return Health(not srv.stopping, sum(1 for u in ups if u.fails == 0), len(ups),
                      srv.shared.redis.state if srv.shared is not None else "disabled")
