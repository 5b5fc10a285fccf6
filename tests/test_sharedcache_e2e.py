"""Two `heimdall serve` processes sharing one real redis-server, each with its own NSD."""

from __future__ import annotations

import time
from dataclasses import dataclass

import dns.message
import dns.query
import dns.rcode
import pytest

from heimdall.sharedvalue import GarbageValue, decode_value, encode_value
from heimdall_server import HeimdallProcess
from tools.nsd import LocalUpstream
from redis_fixture import redis_server  # noqa: F401 - pytest fixture

pytestmark = pytest.mark.slow


@dataclass
class Node:
    """`python -m heimdall serve` (tests/heimdall_server.py) with a private NSD and the shared Redis."""

    upstream: LocalUpstream
    proc: HeimdallProcess

    @classmethod
    def start(cls, redis_url: str) -> "Node":
        upstream = LocalUpstream().start()
        env = {"HEIMDALL_REDIS_URL": redis_url, "HEIMDALL_REDIS_TIMEOUT": "0.2"}
        try:
            return cls(upstream, HeimdallProcess([upstream.addr], env=env).start())
        except BaseException:
            upstream.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()
        self.upstream.stop()
        if self.proc.log_path:
            self.proc.log_path.unlink(missing_ok=True)

    def ask(self, name: str, rdtype: str = "A", timeout: float = 3.0) -> dns.message.Message:
        return self.proc.query(name, rdtype, timeout=timeout)

    def log_lines(self, word: str) -> list[str]:
        return [line for line in self.proc.log.splitlines() if word in line]


@pytest.fixture
def pair(redis_server):
    """Heimdall A and B, each with a private NSD, sharing `redis_server`."""
    nodes: list[Node] = []
    try:
        for _ in range(2):
            nodes.append(Node.start(redis_server.url))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def shared_key(name: str, rdtype: int = 1) -> bytes:
    """The Redis key the server uses: prefix + hex(lower-cased question + RD/CD/DO bits)."""
    question = dns.message.make_query(name, rdtype).to_wire()[12:]
    return b"heimdall:" + (question + b"\x01").hex().encode()


def wait_for_key(r, key: bytes, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not r.exists(key):
        assert time.monotonic() < deadline, f"{key!r} never reached Redis"
        time.sleep(0.02)


def only_ttl(msg: dns.message.Message, section: str = "answer") -> int:
    rrsets = getattr(msg, section)
    assert rrsets, msg.to_text()
    return min(rrset.ttl for rrset in rrsets)


def test_answer_from_a_is_served_by_b_with_aged_ttl(pair, redis_server):
    a, b = pair
    r = redis_server.client()
    positive = a.ask("www.example.test.")
    negative = a.ask("nope.example.test.")
    assert only_ttl(positive) == 300 and negative.rcode() == dns.rcode.NXDOMAIN
    assert only_ttl(negative, "authority") == 60
    wait_for_key(r, shared_key("www.example.test."))
    wait_for_key(r, shared_key("nope.example.test."))
    assert 299_000 < r.pttl(shared_key("www.example.test.")) <= 300_000
    assert 59_000 < r.pttl(shared_key("nope.example.test.")) <= 60_000
    b.upstream.stop()                                    # B can only know it through Redis
    assert b.ask("other.example.test.").rcode() == dns.rcode.SERVFAIL
    time.sleep(2.1)
    got = b.ask("www.example.test.")
    assert got.rcode() == dns.rcode.NOERROR and got.answer[0][0].address == "192.0.2.10"
    assert 290 <= only_ttl(got) <= 298
    got = b.ask("nope.example.test.")
    assert got.rcode() == dns.rcode.NXDOMAIN and 50 <= only_ttl(got, "authority") <= 58
    redis_server.stop()                                  # now B's own cache must have it
    assert b.ask("www.example.test.").answer[0][0].address == "192.0.2.10"
    assert b.ask("nope.example.test.").rcode() == dns.rcode.NXDOMAIN


def test_key_expires_in_redis_with_the_ttl(pair, redis_server):
    a, _ = pair
    r = redis_server.client()
    assert only_ttl(a.ask("short.example.test.")) == 1
    key = shared_key("short.example.test.")
    wait_for_key(r, key)
    assert 0 < r.pttl(key) <= 1000
    time.sleep(1.3)
    assert not r.exists(key)


def test_garbage_under_a_heimdall_key_is_not_served(pair, redis_server):
    _, b = pair
    r = redis_server.client()
    key = shared_key("www.example.test.")
    good = dns.message.make_response(dns.message.make_query("www.example.test.", "A")).to_wire()
    r.set(key, encode_value(good, 300, time.time())[:-3], ex=300)     # truncated answer
    got = b.ask("www.example.test.")                                  # ignored: B asks its upstream
    assert got.rcode() == dns.rcode.NOERROR and got.answer[0][0].address == "192.0.2.10"
    deadline = time.monotonic() + 3                                   # and B's answer replaces it
    while True:
        try:
            stored, _, ttl = decode_value(r.get(key))
            break
        except GarbageValue:
            assert time.monotonic() < deadline, "B never replaced the garbage"
            time.sleep(0.02)
    assert ttl == 300 and dns.message.from_wire(stored).answer[0][0].address == "192.0.2.10"
    key2 = shared_key("mail.example.test.", 15)
    r.set(key2, b"\x00garbage", ex=300)
    b.upstream.stop()
    assert b.ask("mail.example.test.", "MX").rcode() == dns.rcode.SERVFAIL


def test_redis_killed_mid_run_then_back(pair, redis_server):
    a, b = pair
    r = redis_server.client()
    assert a.ask("www.example.test.").answer
    wait_for_key(r, shared_key("www.example.test."))
    redis_server.stop()
    t0 = time.monotonic()
    for i in range(20):                                   # new names: upstream; old: local cache
        for node in (a, b):
            assert node.ask(f"n{i}.bench.test.", timeout=2).answer
            assert node.ask("www.example.test.", timeout=2).answer
    assert time.monotonic() - t0 < 10
    for node in (a, b):
        assert len(node.log_lines("unavailable")) == 1, node.proc.log
    redis_server.start()                                  # back, empty, same port
    r = redis_server.client()
    deadline = time.monotonic() + 40                      # the backoff doubles up to 30 s
    for i in range(400):                                  # A stores new answers there again
        name = f"back{i}.bench.test."
        assert a.ask(name).answer
        time.sleep(0.1)
        if r.exists(shared_key(name)):
            break
        assert time.monotonic() < deadline, "A never used Redis again"
    b.upstream.stop()
    while True:                                           # and B reads them from there again
        got = b.ask(name, timeout=5)
        if got.rcode() == dns.rcode.NOERROR:
            break
        assert time.monotonic() < deadline, "B never used Redis again"
        time.sleep(0.2)
    assert got.answer[0][0].address == "192.0.2.1"
    for node in (a, b):
        assert len(node.log_lines("is back")) == 1, node.proc.log


def test_redis_settings_from_environment():
    from heimdall.config import ConfigError, load_config

    cfg = load_config([], {})
    assert (cfg.redis_url, cfg.redis_key_prefix, cfg.redis_timeout) == ("", "heimdall:", 0.05)
    cfg = load_config(["--redis-timeout", "0.2"], {"HEIMDALL_REDIS_URL": "redis://10.0.0.5:6379/1",
                                                   "HEIMDALL_REDIS_KEY_PREFIX": "edge:"})
    assert (cfg.redis_url, cfg.redis_key_prefix, cfg.redis_timeout) == ("redis://10.0.0.5:6379/1", "edge:", 0.2)
    for bad in ({"HEIMDALL_REDIS_URL": "10.0.0.5:6379"}, {"HEIMDALL_REDIS_TIMEOUT": "0"}):
        with pytest.raises(ConfigError, match="HEIMDALL_REDIS"):
            load_config([], bad)


def test_local_hits_never_touch_redis(pair, redis_server):
    a, _ = pair
    r = redis_server.client()
    names = [f"hit{i}.bench.test." for i in range(50)]
    for name in names:
        assert a.ask(name).answer
    for name in names:                                    # the background writes land
        wait_for_key(r, shared_key(name))
    before = r.info("stats")["total_commands_processed"]
    for _ in range(4):
        for name in names:
            assert a.ask(name).answer                     # local cache hits
    after = r.info("stats")["total_commands_processed"]
    assert after - before == 1                            # the first INFO itself, nothing else


def test_redis_metrics_and_health(redis_server):
    """heimdall_redis_* on /metrics move with real lookups; /health reports Redis but never fails on it."""
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tools.nsd import free_port

    http = free_port()
    upstream = LocalUpstream().start()
    proc = HeimdallProcess([upstream.addr], env={"HEIMDALL_REDIS_URL": redis_server.url,
                                                 "HEIMDALL_REDIS_TIMEOUT": "0.2",
                                                 "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{http}"})
    try:
        proc.start()

        def scrape() -> dict[str, float]:
            text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
            return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

        def health() -> tuple[int, dict]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        for i in range(5):                                # five misses: five Redis lookups, all misses
            assert proc.query(f"m{i}.bench.test.", "A").answer
        deadline = time.monotonic() + 5                   # figures refresh about once a second
        while (m := scrape()).get("heimdall_redis_misses_total", 0) < 5:
            assert time.monotonic() < deadline, m
            time.sleep(0.2)
        assert m["heimdall_redis_hits_total"] == 0
        assert m["heimdall_redis_duration_seconds_count"] >= 5
        # the name before the rename, served beside the new one for one release
        assert m["heimdall_redis_latency_seconds_count"] == m["heimdall_redis_duration_seconds_count"]
        status, body = health()
        assert (status, body["redis"]) == (200, "up"), body

        redis_server.stop()
        assert proc.query("after-kill.bench.test.", "A", timeout=3).answer   # upstream still answers
        deadline = time.monotonic() + 5
        while (m := scrape()).get("heimdall_redis_errors_total", 0) < 1:
            assert time.monotonic() < deadline, m
            time.sleep(0.2)
        status, body = health()
        assert (status, body["redis"]) == (200, "down"), body   # optional tier: reported, not fatal
    finally:
        proc.stop()
        upstream.stop()
