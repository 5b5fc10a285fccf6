"""/metrics, /health and /stats of a real `heimdall serve`, read with real HTTP requests.

/metrics is parsed with prometheus_client's own parser; counters must move by
exactly the queries the test sent (one worker), or sum to them across two
workers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from heimdall.config import HostPort, load_config
from heimdall_server import ROOT, HeimdallProcess
from tools.nsd import LocalUpstream, free_port


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from /metrics."""
    status, body = get(port, "/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(m: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


def test_metrics_move_with_real_queries(upstream, tmp_path):
    block = tmp_path / "block.txt"
    block.write_text("ads.bench.test\n")
    hp = free_tcp_port()
    env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_BLOCKLISTS": str(block)}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        m0 = scrape(hp)
        assert total(m0, "heimdall_queries_total") == 0
        assert total(m0, "heimdall_blocklist_entries") == 1
        names = ["m1.bench.test", "m2.bench.test", "m3.bench.test"]
        for n in names:  # 3 misses
            assert srv.query(n).answer
        for n in names * 2:  # 6 hits (UDP fast path)
            assert srv.query(n).answer
        for _ in range(4):  # 4 blocked (1 via the slow path, 3 from the cache)
            assert srv.query("ads.bench.test").answer[0][0].address == "0.0.0.0"
        for _ in range(2):  # TCP has its own cache variants (no size limit): 1 miss, 1 hit
            assert srv.query("m1.bench.test", tcp=True).answer
        assert srv.query("nope.example.test").rcode() == dns.rcode.NXDOMAIN  # 1 miss, NXDOMAIN
        m = scrape(hp)
        assert total(m, "heimdall_queries_total") == 16
        assert total(m, "heimdall_queries_total", protocol="udp", qtype="A", rcode="NOERROR") == 13
        assert total(m, "heimdall_queries_total", protocol="tcp", qtype="A", rcode="NOERROR") == 2
        assert total(m, "heimdall_queries_total", protocol="udp", qtype="A", rcode="NXDOMAIN") == 1
        assert total(m, "heimdall_cache_misses_total") == 5
        assert total(m, "heimdall_cache_hits_total") == 7
        assert total(m, "heimdall_blocked_queries_total") == 4
        assert total(m, "heimdall_rate_limited_total") == 0
        assert total(m, "heimdall_query_duration_seconds_count", cache="miss") == 5
        assert total(m, "heimdall_query_duration_seconds_count", cache="hit") == 11
        assert total(m, "heimdall_query_duration_seconds_bucket", cache="hit", le="+Inf") == 11
        up = upstream.addr
        assert total(m, "heimdall_upstream_requests_total", upstream=up, result="ok") == 5
        assert total(m, "heimdall_upstream_duration_seconds_count", upstream=up) == 5
        assert total(m, "heimdall_upstream_healthy", upstream=up) == 1
        assert total(m, "heimdall_cache_entries") >= 5
        assert ("heimdall_cache_evictions_total", ()) in m

        status, body = get(hp, "/stats")
        doc = json.loads(body)
        assert status == 200 and doc["cache"]["hits"] == 7 and doc["cache"]["misses"] == 5
        assert doc["blocking"] == {"blocked": 4, "blocklist_entries": 1}
        assert doc["queries"]["total"] == 16 and doc["upstreams"][up]["requests"]["ok"] == 5
        assert "rate_limit" in doc


def test_rate_limited_queries_are_counted(upstream):
    hp = free_tcp_port()
    env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_ENABLE_RATE_LIMITING": "1",
           "HEIMDALL_BURST_SIZE_PER_IP": "3", "HEIMDALL_QUERIES_PER_SECOND_PER_IP": "0.01"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        codes = [srv.query("rl.bench.test").rcode() for _ in range(5)]
        assert codes == [0, 0, 0, dns.rcode.REFUSED, dns.rcode.REFUSED]
        assert total(scrape(hp), "heimdall_rate_limited_total") == 2


def test_health_is_503_when_the_upstream_is_down(tmp_path):
    hp = free_tcp_port()
    up = LocalUpstream().start()
    try:
        env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_UPSTREAM_TIMEOUT": "0.3"}
        with HeimdallProcess([up.addr], env=env) as srv:
            status, body = get(hp, "/health")
            assert status == 200 and json.loads(body)["status"] == "ok"
            assert srv.query("h1.bench.test").answer
            up.stop()
            assert srv.query("h2.bench.test", timeout=3).rcode() == dns.rcode.SERVFAIL
            status, body = get(hp, "/health")
            doc = json.loads(body)
            assert status == 503 and doc["status"] == "unhealthy" and doc["upstreams_healthy"] == 0, doc
            m = scrape(hp)
            assert total(m, "heimdall_upstream_healthy", upstream=up.addr) == 0
            failed = (total(m, "heimdall_upstream_requests_total", upstream=up.addr, result="timeout")
                      + total(m, "heimdall_upstream_requests_total", upstream=up.addr, result="error"))
            assert failed >= 1  # ICMP port unreachable on loopback: "error", else "timeout"
    finally:
        up.stop()


def test_two_workers_are_summed(upstream):
    hp = free_tcp_port()
    env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_WORKER_THREADS": "2"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        for i in range(40):  # a fresh socket per query: SO_REUSEPORT spreads them over both workers
            assert srv.query(f"w{i % 4}.bench.test").answer
        deadline = time.monotonic() + 10
        while True:
            try:
                m = scrape(hp)
            except (OSError, AssertionError):
                m = {}
            if total(m, "heimdall_queries_total") == 40 and total(m, "heimdall_workers") == 2:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.2)
        assert total(m, "heimdall_cache_hits_total") + total(m, "heimdall_cache_misses_total") == 40
        # each worker has its own cache: 4 names miss once per worker that saw them
        assert 4 <= total(m, "heimdall_cache_misses_total") <= 8
        assert 4 <= total(m, "heimdall_cache_entries") <= 8
        status, body = get(hp, "/stats")
        assert status == 200 and json.loads(body)["workers"] == 2
        assert get(hp, "/health")[0] == 200


def serve_once(upstream, env: dict[str, str], avoid: int = 0) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    port = free_port()
    while port == avoid:  # free_port probes UDP; the taken HTTP port is TCP
        port = free_port()
    full.update(env, HEIMDALL_BIND_ADDR=f"127.0.0.1:{port}", HEIMDALL_UPSTREAM_SERVERS=upstream.addr)
    return subprocess.run([sys.executable, "-m", "heimdall", "serve"], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_http_address_in_use_is_a_one_line_error(upstream, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve_once(upstream, {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{port}", "HEIMDALL_WORKER_THREADS": workers},
                       avoid=port)
    assert r.returncode == 3, r.stderr
    assert f"cannot bind HTTP API 127.0.0.1:{port}" in r.stderr and "address already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bad_http_address_is_a_config_error(upstream):
    r = serve_once(upstream, {"HEIMDALL_HTTP_BIND_ADDR": "localhost:http"})
    assert r.returncode == 2 and r.stderr.startswith("error: HEIMDALL_HTTP_BIND_ADDR"), r.stderr


def test_http_default_and_disabled():
    assert load_config([], {}).http_bind_addr == HostPort("127.0.0.1", 8053)
    assert load_config([], {"HEIMDALL_HTTP_BIND_ADDR": "disabled"}).http_bind_addr is None
    assert load_config(["--http-bind-addr", "[::1]:9153"], {}).http_bind_addr == HostPort("::1", 9153)
