"""Per-worker counters, snapshots summed across workers, and a Prometheus collector.

No prometheus-client object is touched on the hot path. Each worker process
owns one ``Stats`` of plain ints and lists; the server bumps attributes
(``stats.blocked += 1``) or calls ``record()`` (a dict bump, a ``bisect``
and a float add). About once a second each worker publishes ``stats.snapshot()`` as
a small JSON file into a shared directory (``SnapshotStore``: write to a temp
file, ``os.replace``, so readers never see half a file). The HTTP side reads
the files of live workers, merges them (``merge()``: counters and histograms
add, cache entries add, blocklist entries take the max, an upstream is
healthy if any worker finds it so, a list URL's figures are those of the one
worker that downloads it, never a sum) and ``HeimdallCollector`` turns the result
into metric families. With one process the HTTP side may instead call
``stats.snapshot()`` directly.

Why files: they need no fixed-size layout (unlike a shared-memory segment),
no extra process (unlike a pipe to the supervisor), survive a crashed worker
and are trivially inspectable. A dead worker's file is ignored (its pid is
gone), so summed counters drop when a worker dies; Prometheus' ``rate()``
treats that as a counter reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

log = logging.getLogger(__name__)

QUERY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0)


@dataclass
class Hist:
    """A histogram as non-cumulative bucket counts (last one is +Inf) and a sum."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> "Hist":
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: "Hist") -> None:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be added")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total

    def copy(self) -> "Hist":
        return Hist(self.bounds, list(self.counts), self.total)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (le, count of observations <= le), ending with +Inf."""
        out, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out

    def to_json(self) -> dict:
        return {"bounds": list(self.bounds), "counts": self.counts, "sum": self.total}

    @classmethod
    def from_json(cls, d: dict) -> "Hist":
        return cls(tuple(d["bounds"]), list(d["counts"]), float(d["sum"]))


@dataclass
class Snapshot:
    """A worker's (or the summed) figures at one moment; plain data, JSON-able."""

    queries: dict[tuple[str, int, int], int] = field(default_factory=dict)
    query_duration: dict[str, Hist] = field(default_factory=dict)   # "hit" / "miss"
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    cache_entries: int = 0
    blocked: int = 0
    rate_limited: int = 0
    blocklist_entries: int = 0
    upstream_requests: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_duration: dict[str, Hist] = field(default_factory=dict)
    upstream_healthy: dict[str, bool] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # extra heimdall_<name>_total (e.g. redis)
    redis_duration: Hist | None = None  # shared Redis tier round trips (None when it is off)
    redis_state: str = "disabled"       # "up", "down" or "disabled"
    # list URL -> {"fetches": {result: n}, "bytes", "entries", "last_success", "last_result"}: reported
    # by the worker that downloads (worker 0) and empty in the others (heimdall/subscriptions.py)
    lists: dict[str, dict] = field(default_factory=dict)
    workers: int = 1
    pid: int = 0
    time: float = 0.0

    def to_json(self) -> str:
        return json.dumps({
            "queries": [[p, t, r, n] for (p, t, r), n in self.queries.items()],
            "query_duration": {k: h.to_json() for k, h in self.query_duration.items()},
            "cache_hits": self.cache_hits, "cache_misses": self.cache_misses,
            "cache_evictions": self.cache_evictions, "cache_entries": self.cache_entries,
            "blocked": self.blocked, "rate_limited": self.rate_limited,
            "blocklist_entries": self.blocklist_entries,
            "upstream_requests": [[u, r, n] for (u, r), n in self.upstream_requests.items()],
            "upstream_duration": {k: h.to_json() for k, h in self.upstream_duration.items()},
            "upstream_healthy": self.upstream_healthy, "counters": self.counters,
            "redis_duration": self.redis_duration.to_json() if self.redis_duration else None,
            "redis_state": self.redis_state, "lists": self.lists,
            "workers": self.workers, "pid": self.pid, "time": self.time,
        })

    @classmethod
    def from_json(cls, text: str) -> "Snapshot":
        d = json.loads(text)
        return cls(
            queries={(p, int(t), int(r)): int(n) for p, t, r, n in d["queries"]},
            query_duration={k: Hist.from_json(h) for k, h in d["query_duration"].items()},
            cache_hits=d["cache_hits"], cache_misses=d["cache_misses"],
            cache_evictions=d["cache_evictions"], cache_entries=d["cache_entries"],
            blocked=d["blocked"], rate_limited=d["rate_limited"],
            blocklist_entries=d["blocklist_entries"],
            upstream_requests={(u, r): int(n) for u, r, n in d["upstream_requests"]},
            upstream_duration={k: Hist.from_json(h) for k, h in d["upstream_duration"].items()},
            upstream_healthy={k: bool(v) for k, v in d["upstream_healthy"].items()},
            counters=dict(d.get("counters", {})), workers=d.get("workers", 1),
            redis_duration=Hist.from_json(d["redis_duration"]) if d.get("redis_duration") else None,
            redis_state=d.get("redis_state", "disabled"), lists=dict(d.get("lists", {})),
            pid=d.get("pid", 0), time=d.get("time", 0.0),
        )


def _add_counts(into: dict, other: dict) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


def _add_hists(into: dict[str, Hist], other: dict[str, Hist]) -> None:
    for k, h in other.items():
        if k in into:
            into[k].add(h)
        else:
            into[k] = h.copy()


def _worse_state(a: str, b: str) -> str:
    """Across workers Redis is "down" if any worker finds it down, "up" if any uses it."""
    order = ("disabled", "up", "down")
    return max(a, b, key=lambda x: order.index(x) if x in order else 0)


def _list_rank(figures: dict) -> tuple[int, float]:
    return sum(figures.get("fetches", {}).values()), float(figures.get("last_success", 0.0))


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sum workers: counters, histograms and cache entries add; blocklist entries
    take the max (every worker loads the same lists); an upstream is healthy if
    any worker finds it healthy. A list URL's figures are one worker's (the one
    that downloads; should two report a URL, the one with more fetches), so
    per-URL gauges and counters are never multiplied by the number of workers."""
    out = Snapshot(workers=0, time=time.time())
    for s in snapshots:
        _add_counts(out.queries, s.queries)
        _add_hists(out.query_duration, s.query_duration)
        out.cache_hits += s.cache_hits
        out.cache_misses += s.cache_misses
        out.cache_evictions += s.cache_evictions
        out.cache_entries += s.cache_entries
        out.blocked += s.blocked
        out.rate_limited += s.rate_limited
        out.blocklist_entries = max(out.blocklist_entries, s.blocklist_entries)
        _add_counts(out.upstream_requests, s.upstream_requests)
        _add_hists(out.upstream_duration, s.upstream_duration)
        for u, ok in s.upstream_healthy.items():
            out.upstream_healthy[u] = out.upstream_healthy.get(u, False) or ok
        _add_counts(out.counters, s.counters)
        if s.redis_duration is not None:
            if out.redis_duration is None:
                out.redis_duration = s.redis_duration.copy()
            else:
                out.redis_duration.add(s.redis_duration)
        out.redis_state = _worse_state(out.redis_state, s.redis_state)
        for url, figures in s.lists.items():
            if url not in out.lists or _list_rank(figures) > _list_rank(out.lists[url]):
                out.lists[url] = figures
        out.workers += s.workers
    return out


class Stats:
    """One worker's live counters: bump attributes directly, or use the record_* helpers.

    Simple counters (hot path: ``stats.blocked += 1``): cache_hits,
    cache_misses, cache_evictions, blocked, rate_limited. Gauges set by the
    server before each publish: cache_entries, blocklist_entries.
    """

    __slots__ = ("queries", "cache_hits", "cache_misses", "cache_evictions", "cache_entries",
                 "blocked", "rate_limited", "blocklist_entries", "upstream_requests",
                 "upstream_hist", "upstream_healthy", "counters",
                 "hit_counts", "hit_sum", "miss_counts", "miss_sum", "redis_hist", "redis_state", "lists")

    def __init__(self) -> None:
        self.queries: defaultdict[tuple[str, int, int], int] = defaultdict(int)
        self.hit_counts = [0] * (len(QUERY_BUCKETS) + 1)
        self.miss_counts = [0] * (len(QUERY_BUCKETS) + 1)
        self.hit_sum = self.miss_sum = 0.0
        self.cache_hits = self.cache_misses = self.cache_evictions = self.cache_entries = 0
        self.blocked = self.rate_limited = self.blocklist_entries = 0
        self.upstream_requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.upstream_hist: dict[str, Hist] = {}
        self.upstream_healthy: dict[str, bool] = {}
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.redis_hist: Hist | None = None
        self.redis_state = "disabled"
        self.lists: dict[str, dict] = {}  # list URL figures, set by the worker that downloads

    def record(self, key: tuple[str, int, int], seconds: float, cache_hit: bool) -> None:
        """Hot path: one answered query; `key` is (protocol, qtype, rcode), ideally a
        tuple the server keeps (e.g. stored with the cache entry) rather than builds."""
        self.queries[key] += 1
        if cache_hit:
            self.hit_counts[bisect_left(QUERY_BUCKETS, seconds)] += 1
            self.hit_sum += seconds
        else:
            self.miss_counts[bisect_left(QUERY_BUCKETS, seconds)] += 1
            self.miss_sum += seconds

    def record_query(self, protocol: str, qtype: int, rcode: int, seconds: float, cache_hit: bool) -> None:
        """Same as record() with the key built here (a tuple per call)."""
        self.record((protocol, qtype, rcode), seconds, cache_hit)

    def observe_hits(self, n: int, seconds_each: float) -> None:
        """Histogram only, for a batch of n fast-path cache hits timed together
        (each gets the batch's mean service time); count their queries separately."""
        self.hit_counts[bisect_left(QUERY_BUCKETS, seconds_each)] += n
        self.hit_sum += n * seconds_each

    def record_upstream(self, upstream: str, result: str, seconds: float | None = None) -> None:
        """One upstream exchange; result e.g. "ok", "timeout", "error", "servfail"."""
        self.upstream_requests[(upstream, result)] += 1
        if seconds is not None:
            h = self.upstream_hist.get(upstream)
            if h is None:
                h = self.upstream_hist[upstream] = Hist.empty(UPSTREAM_BUCKETS)
            h.observe(seconds)

    def set_upstream_healthy(self, upstream: str, healthy: bool) -> None:
        self.upstream_healthy[upstream] = healthy

    def count(self, name: str, n: int = 1) -> None:
        """An extra counter exported as heimdall_<name>_total (room for redis and others)."""
        self.counters[name] += n

    def snapshot(self) -> Snapshot:
        """A copy that later increments do not change."""
        return Snapshot(
            queries=dict(self.queries),
            query_duration={"hit": Hist(QUERY_BUCKETS, list(self.hit_counts), self.hit_sum),
                            "miss": Hist(QUERY_BUCKETS, list(self.miss_counts), self.miss_sum)},
            cache_hits=self.cache_hits, cache_misses=self.cache_misses,
            cache_evictions=self.cache_evictions, cache_entries=self.cache_entries,
            blocked=self.blocked, rate_limited=self.rate_limited,
            blocklist_entries=self.blocklist_entries,
            upstream_requests=dict(self.upstream_requests),
            upstream_duration={k: h.copy() for k, h in self.upstream_hist.items()},
            upstream_healthy=dict(self.upstream_healthy), counters=dict(self.counters),
            redis_duration=self.redis_hist.copy() if self.redis_hist else None, redis_state=self.redis_state,
            lists={url: {**f, "fetches": dict(f.get("fetches", {}))} for url, f in self.lists.items()},
            workers=1, pid=os.getpid(), time=time.time(),
        )


class SnapshotStore:
    """A directory with one ``worker-<pid>.json`` per worker, replaced atomically."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def path_for(self, pid: int) -> str:
        return os.path.join(self.directory, f"worker-{pid}.json")

    def publish(self, snapshot: Snapshot) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(snapshot.to_json())
            os.replace(tmp, self.path_for(snapshot.pid or os.getpid()))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path_for(pid))

    def read(self) -> list[Snapshot]:
        """Snapshots of live workers; unreadable files are logged and skipped."""
        out: list[Snapshot] = []
        try:
            names = os.listdir(self.directory)
        except OSError as e:
            log.warning("cannot list stats directory %s: %s", self.directory, e)
            return out
        for name in names:
            if not (name.startswith("worker-") and name.endswith(".json")):
                continue
            pid = int(name[7:-5]) if name[7:-5].isdigit() else 0
            if not _alive(pid):
                continue
            try:
                with open(os.path.join(self.directory, name)) as f:
                    out.append(Snapshot.from_json(f.read()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipping unreadable stats file %s: %s", name, e)
        return out

    def merged(self) -> Snapshot:
        return merge(self.read())


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def publish_forever(stats: Stats, store: SnapshotStore, interval: float = 1.0,
                          refresh: Callable[[Stats], None] | None = None) -> None:
    """Run as a task in each worker: refresh gauges, publish, sleep; errors are logged, not fatal."""
    failing = False
    while True:
        try:
            if refresh is not None:
                refresh(stats)
            store.publish(stats.snapshot())
            if failing:
                log.info("stats publishing to %s works again", store.directory)
            failing = False
        except Exception as e:  # noqa: BLE001 - metrics must never take a worker down
            if not failing:
                log.error("cannot publish stats to %s: %s", store.directory, e)
            failing = True
        await asyncio.sleep(interval)
