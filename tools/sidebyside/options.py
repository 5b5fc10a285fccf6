"""What a side-by-side run measures: the options and the metric names every module shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

KNOWN_PEERS = ("unbound", "dnsmasq", "pdns-recursor", "dnsdist")
WORKLOADS = ("hit", "miss", "mixed")
OFFERED_QPS = 10_000
METRICS = {  # name -> (label, unit, higher is better)
    "qps_dnsperf": ("cache-hit throughput, dnsperf -c 20 -T 1", "q/s", True),
    "qps_builtin": ("cache-hit throughput, built-in generator, 20 clients", "q/s", True),
    "p50_us_builtin": ("p50 latency at 10,000 q/s offered, built-in", "us", False),
    "p99_us_builtin": ("p99 latency at 10,000 q/s offered, built-in", "us", False),
    "p50_us_dnsperf": ("p50 latency at 10,000 q/s offered, dnsperf", "us", False),
    "p99_us_dnsperf": ("p99 latency at 10,000 q/s offered, dnsperf", "us", False),
    "cpu_pct_per_10k": ("server CPU per 10,000 q/s (% of one core)", "%", False),
    "rss_mb": ("resident memory (server tree)", "MB", False),
    "qps_miss": ("cache-miss throughput, dnsperf -c 20 -T 1, every name asked once", "q/s", True),
    "cpu_us_per_miss": ("server CPU per cache miss", "us", False),
    "qps_mixed": ("mixed 80/20 throughput, dnsperf -c 20 -T 1", "q/s", True),
    "cpu_us_per_query_mixed": ("server CPU per query, mixed 80/20", "us", False),
}


@dataclass
class CompareOptions:
    peers: list[str] = field(default_factory=lambda: list(KNOWN_PEERS))
    rounds: int = 3
    duration: float = 5.0
    workers: int = 1
    cache_entries: int = 100_000
    warm_set: int = 1000
    servers: list[str] = field(default_factory=list)     # [NAME=]HOST:PORT of running servers
    pids: list[int] = field(default_factory=list)        # their pids, in the same order
    concurrency: list[int] = field(default_factory=list)
    fill: int = 0
    capacity: bool = False                               # ramp each contestant's cache-hit rate to its capacity
    scaling: bool = False
    bare: bool = False                                   # add the Python + uvloop floor as a contestant
    variants: dict = field(default_factory=dict)         # name -> HEIMDALL_* (or PYTHONPATH) env: extra Heimdall contestants
    engines: tuple[str, ...] = ("dnsperf", "builtin")
    workloads: tuple[str, ...] = ("hit",)                 # hit, miss, mixed (miss and mixed need dnsperf)
    results_dir: Path = Path("performance_results")
    heimdall_env: dict = field(default_factory=dict)
    transports: tuple[str, ...] = ("udp",)                # udp, tcp, dot, doh: each a row per server that serves it
