"""Two instances of two workers each, sharing one real redis-server: a flush or a list reload in one
reaches every worker of the other (heimdall/fleet.py).

Real parts: two `heimdall serve` supervisors with 2 workers each, the session's NSD as their
upstream, one blocklist file, a real redis-server, dnspython clients from fresh source ports
(so both workers of an instance answer), /metrics and the control API.
"""

from __future__ import annotations

import signal
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from heimdall_server import HeimdallProcess
from redis_fixture import redis_server  # noqa: F401 - pytest fixture
from test_control_api import call
from test_http_e2e import free_tcp_port, scrape, total

pytestmark = pytest.mark.slow


def answer(srv: HeimdallProcess, name: str) -> str:
    r = dns.query.udp(dns.message.make_query(name, "A"), srv.address, port=srv.port, timeout=3)
    return r.answer[0][0].to_text() if r.answer else dns.rcode.to_text(r.rcode())


def until(check, srv: HeimdallProcess, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, srv.log
        time.sleep(0.2)


def test_a_flush_and_a_list_reload_reach_every_worker_of_the_other_instance(redis_server, upstream, tmp_path):
    blocklist = tmp_path / "ads.txt"
    blocklist.write_text("ads.bench.test\n")
    ports = {"a": free_tcp_port(), "b": free_tcp_port()}
    r = redis_server.client()

    def node(name: str) -> HeimdallProcess:
        return HeimdallProcess([upstream.addr], env={
            "HEIMDALL_REDIS_URL": redis_server.url, "HEIMDALL_WORKER_THREADS": "2",
            "HEIMDALL_BLOCKLISTS": str(blocklist), "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{ports[name]}"})

    with node("a") as a, node("b") as b:
        until(lambda: r.pubsub_numsub(b"heimdall:invalidate")[0][1] == 4, b)  # every worker listens
        for i in range(40):  # fresh source ports: both of b's workers cache the names (10 tries each)
            assert answer(b, f"w{i % 4 + 1}.bench.test") == "192.0.2.1"
        until(lambda: total(scrape(ports["b"]), "heimdall_cache_entries") >= 6, b)
        assert r.keys(b"heimdall:*"), "b's answers reached Redis"

        status, body = call(ports["a"], "POST", "/api/cache/flush")
        assert status == 200, body
        until(lambda: total(scrape(ports["b"]), "heimdall_cache_entries") == 0, b)
        assert [k for k in r.keys(b"heimdall:*") if k != b"heimdall:invalidate"] == []

        assert all(answer(b, "w2.bench.test") == "192.0.2.1" for _ in range(6))
        blocklist.write_text("ads.bench.test\nw2.bench.test\n")
        a.signal(signal.SIGHUP)  # a alone reloads; b hears of it
        until(lambda: all(answer(b, "w2.bench.test") == "0.0.0.0" for _ in range(6)), b)
        assert "another instance of the fleet reloaded" in b.log and "another instance" not in a.log
        assert b.log.count("another instance of the fleet flushed") == 2, b.log  # each of b's workers
        assert a.stop() == 0 and b.stop() == 0


def test_redis_slow_full_then_gone_under_load_loses_no_query(redis_server, upstream):
    """Redis stalls for a second twice (DEBUG SLEEP), then refuses every write (maxmemory, noeviction),
    then is killed, while 2 workers answer a closed loop of cached and new names: nothing is lost, the
    failures are counted, and the server keeps answering from its own cache and the upstream."""
    from closed_loop import ClosedLoop

    hp = free_tcp_port()
    r = redis_server.client()
    env = {"HEIMDALL_REDIS_URL": redis_server.url, "HEIMDALL_REDIS_TIMEOUT": "0.1", "HEIMDALL_WORKER_THREADS": "2",
           "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        pick = (lambda c, s: (f"w{s % 50 + 1}.bench.test", "any") if s % 2 else (f"new{c}-{s}.bench.test", "any"))
        with ClosedLoop(srv.address, srv.port, pick, clients=4, gap=0.01) as load:
            time.sleep(0.5)
            for _ in range(2):
                r.execute_command("DEBUG", "SLEEP", "1")  # Redis answers nobody for a second
                time.sleep(0.5)
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", "1")  # every write is refused: OOM
            time.sleep(1.5)
            redis_server.stop()  # then gone
            time.sleep(1.5)
        recs = load.stop()
        figures = scrape(hp)
        assert srv.stop() == 0
    assert recs and not [x for x in recs if x.lost], f"{sum(x.lost for x in recs)} of {len(recs)} lost"
    assert total(figures, "heimdall_redis_errors_total") > 0, figures
    print(f"{len(recs)} queries, 0 lost; Redis errors counted: {total(figures, 'heimdall_redis_errors_total'):.0f}")
