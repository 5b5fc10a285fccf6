"""Per-worker Stats, snapshots summed across real processes, and the Prometheus exposition."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from heimdall.prometheus import HeimdallCollector
from heimdall.metrics import (QUERY_BUCKETS, Hist, Snapshot, SnapshotStore, Stats,
                              merge, publish_forever)

REQUIRED = {
    "heimdall_queries": "counter", "heimdall_query_duration_seconds": "histogram",
    "heimdall_cache_hits": "counter", "heimdall_cache_misses": "counter",
    "heimdall_cache_evictions": "counter", "heimdall_cache_entries": "gauge",
    "heimdall_blocked_queries": "counter", "heimdall_rate_limited": "counter",
    "heimdall_upstream_requests": "counter", "heimdall_upstream_duration_seconds": "histogram",
    "heimdall_upstream_healthy": "gauge", "heimdall_blocklist_entries": "gauge",
}


def scrape(snapshot_fn) -> dict[str, dict[tuple, float]]:
    """Expose via prometheus-client and parse the text back: {family: {(sample, labels): value}}."""
    reg = CollectorRegistry()
    reg.register(HeimdallCollector(snapshot_fn))
    text = generate_latest(reg).decode()
    out: dict[str, dict] = {}
    types = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            out.setdefault(fam.name, {})[(s.name, tuple(sorted(s.labels.items())))] = s.value
    out["__types__"] = types
    return out


def filled_stats(scale: int = 1) -> Stats:
    s = Stats()
    for _ in range(3 * scale):
        s.record_query("udp", 1, 0, 0.00007, True)      # A NOERROR hits, 70 us
    for _ in range(2 * scale):
        s.record(("tcp", 28, 3), 0.030, False)           # AAAA NXDOMAIN misses, 30 ms
    s.cache_hits += 3 * scale
    s.cache_misses += 2 * scale
    s.cache_evictions += scale
    s.cache_entries = 10
    s.blocked += 4 * scale
    s.rate_limited += 5 * scale
    s.blocklist_entries = 1000
    s.record_upstream("127.0.0.1:5300", "ok", 0.004)
    s.record_upstream("127.0.0.1:5300", "timeout")
    s.set_upstream_healthy("127.0.0.1:5300", True)
    s.set_upstream_healthy("127.0.0.1:5301", False)
    s.count("redis_hits", 7 * scale)
    return s


def test_histogram_buckets_follow_prometheus_le():
    h = Hist.empty((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.total == pytest.approx(4.65)


def test_snapshot_is_a_copy_and_survives_json():
    s = filled_stats()
    snap = s.snapshot()
    s.record_query("udp", 1, 0, 0.001, True)
    s.blocked += 100
    assert snap.queries[("udp", 1, 0)] == 3 and snap.blocked == 4
    back = Snapshot.from_json(snap.to_json())
    assert back == snap


def test_exposition_has_every_required_family_with_right_values():
    m = scrape(filled_stats().snapshot)
    types = m["__types__"]
    for name, kind in REQUIRED.items():
        assert types.get(name) == kind, (name, types.get(name))
    q = m["heimdall_queries"]
    assert q[("heimdall_queries_total", (("protocol", "udp"), ("qtype", "A"), ("rcode", "NOERROR")))] == 3
    assert q[("heimdall_queries_total", (("protocol", "tcp"), ("qtype", "AAAA"), ("rcode", "NXDOMAIN")))] == 2
    d = m["heimdall_query_duration_seconds"]
    assert d[("heimdall_query_duration_seconds_bucket", (("cache", "hit"), ("le", "5e-05")))] == 0
    assert d[("heimdall_query_duration_seconds_bucket", (("cache", "hit"), ("le", "0.0001")))] == 3
    assert d[("heimdall_query_duration_seconds_bucket", (("cache", "miss"), ("le", "0.025")))] == 0
    assert d[("heimdall_query_duration_seconds_bucket", (("cache", "miss"), ("le", "0.05")))] == 2
    assert d[("heimdall_query_duration_seconds_count", (("cache", "miss"),))] == 2
    assert d[("heimdall_query_duration_seconds_sum", (("cache", "miss"),))] == pytest.approx(0.06)
    assert m["heimdall_cache_hits"][("heimdall_cache_hits_total", ())] == 3
    assert m["heimdall_cache_entries"][("heimdall_cache_entries", ())] == 10
    assert m["heimdall_blocked_queries"][("heimdall_blocked_queries_total", ())] == 4
    assert m["heimdall_rate_limited"][("heimdall_rate_limited_total", ())] == 5
    u = m["heimdall_upstream_requests"]
    assert u[("heimdall_upstream_requests_total", (("result", "timeout"), ("upstream", "127.0.0.1:5300")))] == 1
    h = m["heimdall_upstream_healthy"]
    assert h[("heimdall_upstream_healthy", (("upstream", "127.0.0.1:5300"),))] == 1
    assert h[("heimdall_upstream_healthy", (("upstream", "127.0.0.1:5301"),))] == 0
    assert m["heimdall_upstream_duration_seconds"][
        ("heimdall_upstream_duration_seconds_count", (("upstream", "127.0.0.1:5300"),))] == 1
    assert m["heimdall_blocklist_entries"][("heimdall_blocklist_entries", ())] == 1000
    assert m["heimdall_redis_hits"][("heimdall_redis_hits_total", ())] == 7


def test_merge_rules():
    a, b = filled_stats(1).snapshot(), filled_stats(2).snapshot()
    b.upstream_healthy["127.0.0.1:5301"] = True
    m = merge([a, b])
    assert m.workers == 2
    assert m.queries[("udp", 1, 0)] == 9 and m.blocked == 12 and m.cache_entries == 20
    assert m.blocklist_entries == 1000                       # same lists in every worker: max, not sum
    assert m.upstream_healthy == {"127.0.0.1:5300": True, "127.0.0.1:5301": True}
    assert m.query_duration["hit"].count == 9
    assert m.counters["redis_hits"] == 21


def _worker(directory: str, scale: int) -> None:
    SnapshotStore(directory).publish(filled_stats(scale).snapshot())
    time.sleep(60)  # stay alive (a live pid) until the test kills us


def wait_for_files(directory, n: int) -> None:
    deadline = time.monotonic() + 20
    while len([f for f in os.listdir(directory) if f.startswith("worker-")]) < n:
        assert time.monotonic() < deadline, "workers did not publish"
        time.sleep(0.02)


def test_snapshots_from_real_worker_processes_are_summed_and_dead_ones_ignored(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), i + 1), daemon=True) for i in range(3)]
    for p in procs:
        p.start()
    try:
        wait_for_files(tmp_path, 3)
        store = SnapshotStore(str(tmp_path))
        total = store.merged()
        assert total.workers == 3 and total.blocked == 4 * (1 + 2 + 3)
        m = scrape(store.merged)
        assert m["heimdall_queries"][("heimdall_queries_total",
                                      (("protocol", "udp"), ("qtype", "A"), ("rcode", "NOERROR")))] == 18
        procs[2].kill()
        procs[2].join(10)
        total = store.merged()
        assert total.workers == 2 and total.blocked == 4 * (1 + 2)
        (tmp_path / "worker-garbage.json").write_text("{")
        (tmp_path / f"worker-{os.getpid()}.json").write_text("{not json")
        assert store.merged().workers == 2                  # bad files skipped, not fatal
    finally:
        for p in procs:
            p.kill()
            p.join(10)


def test_publish_forever_publishes_and_survives_errors(tmp_path, caplog):
    stats = Stats()
    store = SnapshotStore(str(tmp_path / "stats"))
    calls = []

    def refresh(s: Stats) -> None:
        calls.append(1)
        s.cache_entries = len(calls)

    async def run() -> None:
        task = asyncio.create_task(publish_forever(stats, store, interval=0.02, refresh=refresh))
        await asyncio.sleep(0.15)
        store.directory = str(tmp_path / "missing" / "dir")     # publishing now fails
        await asyncio.sleep(0.1)
        task.cancel()

    with caplog.at_level(logging.ERROR, logger="heimdall.metrics"):
        asyncio.run(run())
    assert len(calls) >= 4
    snaps = SnapshotStore(str(tmp_path / "stats")).read()
    assert len(snaps) == 1 and snaps[0].cache_entries >= 3
    assert caplog.text.count("cannot publish stats") == 1


def test_observe_hits_adds_a_batch_to_the_hit_histogram():
    s = Stats()
    s.observe_hits(10, 0.0003)
    h = s.snapshot().query_duration["hit"]
    assert h.cumulative()[3] == ("0.0005", 10) and h.cumulative()[2] == ("0.00025", 0)
    assert h.total == pytest.approx(0.003)


def test_record_is_cheap():
    """Not a benchmark: a generous bound that still catches an accidental O(n). In this process's CPU
    time, which another process holding the core does not add to."""
    s = Stats()
    key = ("udp", 1, 0)
    n = 200_000
    t = time.process_time()
    for _ in range(n):
        s.record(key, 0.0001, True)
    per_call = (time.process_time() - t) / n
    assert s.queries[key] == n and sum(s.hit_counts) == n
    assert per_call < 5e-6, per_call
    assert len(QUERY_BUCKETS) + 1 == len(s.hit_counts)
