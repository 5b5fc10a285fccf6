"""Real HTTP requests to /metrics, /health and /stats, on uvloop and in a background thread."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from heimdall.httpapi import BackgroundHttpApi, Health, HttpApi, parse_bind_addr, stats_document
from heimdall.metrics import SnapshotStore, Stats

UP = "127.0.0.1:5300"


def stats(healthy: bool = True) -> Stats:
    s = Stats()
    s.record_query("udp", 1, 0, 0.0002, True)
    s.record_query("udp", 1, 3, 0.02, False)
    s.cache_hits, s.cache_misses, s.cache_entries = 1, 1, 1
    s.blocked, s.rate_limited, s.blocklist_entries = 2, 3, 42
    s.record_upstream(UP, "ok", 0.01)
    s.set_upstream_healthy(UP, healthy)
    return s


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_endpoints_on_uvloop_with_aiohttp_client():
    s = stats()

    async def run() -> None:
        api = HttpApi(s.snapshot, host="127.0.0.1", port=0)
        await api.start()
        try:
            base = f"http://127.0.0.1:{api.port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/metrics") as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                    fams = families(await r.text())
                q = {tuple(sorted(x.labels.items())): x.value for x in fams["heimdall_queries"].samples}
                assert q[(("protocol", "udp"), ("qtype", "A"), ("rcode", "NXDOMAIN"))] == 1
                assert fams["heimdall_blocklist_entries"].samples[0].value == 42
                s.blocked += 5                              # figures are read at scrape time
                async with http.get(base + "/metrics") as r:
                    assert families(await r.text())["heimdall_blocked_queries"].samples[0].value == 7
                async with http.get(base + "/health") as r:
                    assert r.status == 200
                    assert await r.json() == {"status": "ok", "serving": True,
                                              "upstreams_healthy": 1, "upstreams_total": 1,
                                              "redis": "disabled"}
                async with http.get(base + "/stats") as r:
                    doc = await r.json()
                assert doc["cache"] == {"hits": 1, "misses": 1, "hit_ratio": 0.5, "evictions": 0, "entries": 1}
                assert doc["blocking"] == {"blocked": 7, "blocklist_entries": 42}
                assert doc["rate_limit"] == {"rate_limited": 3}
                assert doc["upstreams"][UP]["requests"] == {"ok": 1} and doc["upstreams"][UP]["healthy"]
                async with http.get(base + "/nope") as r:
                    assert r.status == 404
        finally:
            await api.stop()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", api.port), timeout=1).close()

    uvloop.run(run())


def test_health_is_503_without_a_healthy_upstream_and_recovers():
    s = stats(healthy=False)
    bg = BackgroundHttpApi(HttpApi(s.snapshot, port=0))
    bg.start()
    try:
        url = f"http://127.0.0.1:{bg.api.port}/health"
        code, ctype, body = get(url)
        assert code == 503 and ctype.startswith("application/json")
        assert json.loads(body)["status"] == "unhealthy"
        s.set_upstream_healthy(UP, True)
        assert get(url)[0] == 200
        s.upstream_healthy.clear()                     # no upstream known at all
        assert get(url)[0] == 503
    finally:
        bg.stop()


def test_custom_health_and_failing_sources_give_503():
    serving = {"up": True}
    api = HttpApi(stats().snapshot, health_fn=lambda: Health(serving["up"], 1, 1), port=0)
    bg = BackgroundHttpApi(api)
    bg.start()
    try:
        url = f"http://127.0.0.1:{api.port}/health"
        assert get(url)[0] == 200
        serving["up"] = False
        assert get(url)[0] == 503
        api.health_fn = lambda: 1 / 0
        assert get(url)[0] == 503
    finally:
        bg.stop()


def test_bind_conflict_raises_and_leaves_no_thread():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        bg = BackgroundHttpApi(HttpApi(stats().snapshot, port=holder.getsockname()[1]))
        with pytest.raises(OSError):
            bg.start()
        assert not bg._thread.is_alive()
    finally:
        holder.close()


def _worker(directory: str, n: int) -> None:
    s = stats()
    for _ in range(n):
        s.record_query("tcp", 28, 0, 0.001, False)
    SnapshotStore(directory).publish(s.snapshot())
    time.sleep(60)


def test_metrics_summed_across_worker_processes(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), n), daemon=True) for n in (10, 20)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 20
        while len([f for f in os.listdir(tmp_path) if not f.startswith(".tmp-")]) < 2:  # both published whole
            assert time.monotonic() < deadline
            time.sleep(0.02)
        store = SnapshotStore(str(tmp_path))
        bg = BackgroundHttpApi(HttpApi(store.merged, port=0))
        bg.start()
        try:
            code, _, text = get(f"http://127.0.0.1:{bg.api.port}/metrics")
            fams = families(text)
            q = {tuple(sorted(x.labels.items())): x.value for x in fams["heimdall_queries"].samples}
            assert q[(("protocol", "tcp"), ("qtype", "AAAA"), ("rcode", "NOERROR"))] == 30
            assert fams["heimdall_workers"].samples[0].value == 2
            assert fams["heimdall_blocklist_entries"].samples[0].value == 42
            doc = json.loads(get(f"http://127.0.0.1:{bg.api.port}/stats")[2])
            assert doc["workers"] == 2 and doc["blocking"]["blocked"] == 4
        finally:
            bg.stop()
    finally:
        for p in procs:
            p.kill()
            p.join(10)


def test_parse_bind_addr():
    assert parse_bind_addr(None) == ("127.0.0.1", 8053)
    assert parse_bind_addr("0.0.0.0:9153") == ("0.0.0.0", 9153)
    assert parse_bind_addr("[::1]:8081") == ("::1", 8081)
    assert parse_bind_addr("disabled") is None
    for bad in ("localhost", "1.2.3.4:http", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            parse_bind_addr(bad)


def test_stats_document_without_traffic():
    doc = stats_document(Stats().snapshot())
    assert doc["cache"]["hit_ratio"] is None and doc["queries"]["total"] == 0
