"""The control API acts on every worker: pause blocking (with a deadline), resume, flush the cache, refresh lists.

Queries go from a fresh socket each, so SO_REUSEPORT spreads them over the
workers: "every answer" below means every worker's answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dns.rcode
import pytest

from heimdall.config import ConfigError, load_config
from heimdall_server import ROOT, HeimdallProcess
from test_http_e2e import free_tcp_port


def call(port: int, method: str, path: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def rcodes(srv: HeimdallProcess, name: str, n: int = 16) -> set[int]:
    return {srv.query(name).rcode() for _ in range(n)}


def until(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


@pytest.fixture(params=["1", "2"], ids=["one-process", "two-workers"])
def server(request, upstream, tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("www.example.test\n")
    hp = free_tcp_port()
    env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_WORKER_THREADS": request.param,
           "HEIMDALL_BLOCKLISTS": str(blocklist), "HEIMDALL_BLOCKING_MODE": "nxdomain"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        if request.param == "2":
            until(lambda: call(hp, "GET", "/stats")[1].get("workers") == 2)
        yield srv, hp, blocklist, int(request.param)


def test_pause_with_a_deadline_then_blocking_resumes_everywhere(server):
    srv, hp, _, workers = server
    assert rcodes(srv, "www.example.test") == {dns.rcode.NXDOMAIN}  # now cached as blocked in every worker
    status, body = call(hp, "POST", "/api/blocking/disable?duration=3s")
    assert status == 200 and body["acknowledged"] == body["workers"] == workers, body
    assert body["blocking"]["enabled"] is False and 0 < body["blocking"]["remaining_s"] <= 3
    assert rcodes(srv, "www.example.test") == {dns.rcode.NOERROR}
    until(lambda: call(hp, "GET", "/api/blocking/status")[1]["enabled"])
    until(lambda: rcodes(srv, "www.example.test") == {dns.rcode.NXDOMAIN}, seconds=3)


def test_pause_without_a_deadline_lasts_until_enabled(server):
    srv, hp, _, _ = server
    assert call(hp, "POST", "/api/blocking/disable")[0] == 200
    status = call(hp, "GET", "/api/blocking/status")[1]
    paused = {"enabled": False, "disabled_until": None, "remaining_s": None}
    assert status == {**paused, "groups": {"default": paused}}  # without client groups: the default one
    assert rcodes(srv, "www.example.test") == {dns.rcode.NOERROR}
    assert call(hp, "POST", "/api/blocking/enable")[0] == 200
    assert rcodes(srv, "www.example.test") == {dns.rcode.NXDOMAIN}


def test_flush_empties_every_workers_cache(server):
    srv, hp, _, _ = server
    rcodes(srv, "w1.bench.test")  # cached by every worker (TTL 3600)
    time.sleep(1.2)
    assert max(srv.query("w1.bench.test").answer[0].ttl for _ in range(16)) < 3600  # aged: from cache
    status, body = call(hp, "POST", "/api/cache/flush")
    assert status == 200 and body["acknowledged"] == body["workers"], body
    first = [srv.query("w1.bench.test").answer[0].ttl for _ in range(16)]
    assert first.count(3600) >= 1 and min(first) >= 3599, first  # refetched by each worker, not aged


def test_lists_refresh_takes_effect_in_every_worker(server):
    srv, hp, blocklist, _ = server
    assert rcodes(srv, "w2.bench.test") == {dns.rcode.NOERROR}
    blocklist.write_text("www.example.test\nw2.bench.test\n")
    assert call(hp, "POST", "/api/lists/refresh")[0] == 200
    until(lambda: rcodes(srv, "w2.bench.test") == {dns.rcode.NXDOMAIN})


def test_bad_duration_is_400(server):
    _, hp, _, _ = server
    status, body = call(hp, "POST", "/api/blocking/disable?duration=soon")
    assert status == 400 and "duration" in body["error"]


def test_token_guards_api_calls_only(upstream):
    hp = free_tcp_port()
    env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_API_TOKEN": "s3cret"}
    with HeimdallProcess([upstream.addr], env=env):
        assert call(hp, "POST", "/api/cache/flush")[0] == 401
        assert call(hp, "POST", "/api/cache/flush", token="wrong")[0] == 401
        assert call(hp, "GET", "/api/blocking/status", token="s3cret")[0] == 200
        assert call(hp, "POST", "/api/cache/flush", token="s3cret")[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{hp}/metrics", timeout=5) as r:
            assert r.status == 200  # scrapers need no token


def test_an_http_address_beyond_loopback_needs_a_token():
    with pytest.raises(ConfigError, match="HEIMDALL_API_TOKEN"):
        load_config([], {"HEIMDALL_HTTP_BIND_ADDR": "0.0.0.0:8053"})
    assert load_config([], {"HEIMDALL_HTTP_BIND_ADDR": "0.0.0.0:8053", "HEIMDALL_API_TOKEN": "x"}).api_token == "x"
    assert load_config([], {"HEIMDALL_HTTP_BIND_ADDR": "[::1]:8053"}).http_bind_addr is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env["HEIMDALL_HTTP_BIND_ADDR"] = "0.0.0.0:8053"
    r = subprocess.run([sys.executable, "-m", "heimdall", "serve"], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("error: HEIMDALL_HTTP_BIND_ADDR"), r.stderr
