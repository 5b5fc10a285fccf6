"""/metrics: the summed snapshot turned into Prometheus metric families at scrape time.

Series names, labels and buckets are a contract with the dashboards and
alerts written against them (docs/blocking.md and docs/redis.md name them).
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from heimdall.metrics import QUERY_BUCKETS, Hist, Snapshot
from heimdall.mnemonics import qtype_text, rcode_text

# The Redis histogram's name before every duration histogram ended in _duration_seconds; served
# beside the new name for one release so that dashboards can move (README, "Upgrading").
REDIS_DURATION_OLD_NAME = "heimdall_redis_latency_seconds"


class HeimdallCollector(Collector):
    """Turns the summed snapshot into Prometheus metric families at scrape time."""

    def __init__(self, snapshot_fn: Callable[[], Snapshot]) -> None:
        self.snapshot_fn = snapshot_fn

    def describe(self) -> list:
        return []  # families are known only at scrape time; nothing to check at register

    def collect(self) -> Iterator:
        s = self.snapshot_fn()
        q = CounterMetricFamily("heimdall_queries", "DNS queries answered",
                                labels=["protocol", "qtype", "rcode"])
        for (proto, qtype, rcode), n in sorted(s.queries.items()):
            q.add_metric([proto, qtype_text(qtype), rcode_text(rcode)], n)
        yield q
        d = HistogramMetricFamily("heimdall_query_duration_seconds",
                                  "Time from receiving a query to sending its answer", labels=["cache"])
        for kind in ("hit", "miss"):
            h = s.query_duration.get(kind) or Hist.empty(QUERY_BUCKETS)
            d.add_metric([kind], h.cumulative(), h.total)
        yield d
        yield CounterMetricFamily("heimdall_cache_hits", "Cache lookups that found an answer", value=s.cache_hits)
        yield CounterMetricFamily("heimdall_cache_misses", "Cache lookups that did not", value=s.cache_misses)
        yield CounterMetricFamily("heimdall_cache_evictions", "Entries evicted from the cache",
                                  value=s.cache_evictions)
        yield GaugeMetricFamily("heimdall_cache_entries", "Entries in the cache (all workers)",
                                value=s.cache_entries)
        yield CounterMetricFamily("heimdall_blocked_queries", "Queries answered as blocked", value=s.blocked)
        yield CounterMetricFamily("heimdall_rate_limited", "Queries refused or dropped by rate limiting",
                                  value=s.rate_limited)
        u = CounterMetricFamily("heimdall_upstream_requests", "Queries sent upstream by outcome",
                                labels=["upstream", "result"])
        for (up, result), n in sorted(s.upstream_requests.items()):
            u.add_metric([up, result], n)
        yield u
        ud = HistogramMetricFamily("heimdall_upstream_duration_seconds", "Upstream round-trip time",
                                   labels=["upstream"])
        for up, h in sorted(s.upstream_duration.items()):
            ud.add_metric([up], h.cumulative(), h.total)
        yield ud
        hl = GaugeMetricFamily("heimdall_upstream_healthy", "1 if the upstream is considered healthy",
                               labels=["upstream"])
        for up, ok in sorted(s.upstream_healthy.items()):
            hl.add_metric([up], 1.0 if ok else 0.0)
        yield hl
        yield GaugeMetricFamily("heimdall_blocklist_entries", "Names in the loaded blocklists",
                                value=s.blocklist_entries)
        yield GaugeMetricFamily("heimdall_workers", "Worker processes whose figures are included",
                                value=s.workers)
        yield from list_families(s)
        if s.redis_duration is not None:
            for name in ("heimdall_redis_duration_seconds", REDIS_DURATION_OLD_NAME):
                rd = HistogramMetricFamily(name, "Shared Redis tier round-trip time")
                rd.add_metric([], s.redis_duration.cumulative(), s.redis_duration.total)
                yield rd
        for name, n in sorted(s.counters.items()):
            yield CounterMetricFamily(f"heimdall_{name}", f"{name} (extra counter)", value=n)


def list_families(s: Snapshot) -> Iterator:
    """Lists subscribed by URL: one worker downloads, so these are its figures (never a sum)."""
    fetches = CounterMetricFamily("heimdall_blocklist_fetch", "List URL downloads by result (updated, "
                                  "not_modified, unchanged, error, http_error, truncated, oversized, empty)",
                                  labels=["url", "result"])
    size = GaugeMetricFamily("heimdall_blocklist_bytes", "Size of the list copy in use", labels=["url"])
    entries = GaugeMetricFamily("heimdall_blocklist_url_entries", "Names in the list copy in use", labels=["url"])
    success = GaugeMetricFamily("heimdall_blocklist_last_success_timestamp_seconds",
                                "When a download last confirmed or replaced the copy (0: never)", labels=["url"])
    for url, f in sorted(s.lists.items()):
        for result, n in sorted(f.get("fetches", {}).items()):
            fetches.add_metric([url, result], n)
        size.add_metric([url], f.get("bytes", 0))
        entries.add_metric([url], f.get("entries", 0))
        success.add_metric([url], f.get("last_success", 0.0))
    yield from (fetches, size, entries, success)
