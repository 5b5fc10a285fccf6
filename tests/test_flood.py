"""A random-subdomain flood: unique names under one zone whose servers never answer, while
legitimate clients ask cached names.

Real parts: `heimdall serve` with the session's NSD as the default upstream and `victim.test`
forwarded to a silent upstream (every miss there waits the whole upstream timeout, the worst
case of water torture), the project's load generator for both the flood (a `heimdall-tools load`
process) and the legitimate clients, /metrics.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import psutil

from heimdall_server import HeimdallProcess
from probe_targets import CLI, REPO
from test_http_e2e import free_tcp_port, scrape, total
from tools.loadgen import LoadConfig, run_load
from udp_responder import UdpResponder

PER_ZONE = 50
TIMEOUT_S = 2.0
FLOOD_S = 5.0


class CountingSilent(UdpResponder):
    """The victim zone's servers: they receive every query and answer none."""

    def __enter__(self):
        self.received = 0
        self.lock = threading.Lock()
        return super().__enter__()

    def handle(self, data: bytes, src: tuple) -> None:
        with self.lock:
            self.received += 1


def test_a_flood_under_one_zone_holds_its_share_of_upstream_work_and_no_cached_answer(upstream, tmp_path):
    hp = free_tcp_port()
    with CountingSilent() as victim:
        env = {"HEIMDALL_FORWARD_ZONES": f"victim.test={victim.addr}", "HEIMDALL_UPSTREAM_TIMEOUT": str(TIMEOUT_S),
               "HEIMDALL_MAX_INFLIGHT_PER_ZONE": str(PER_ZONE), "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}
        with HeimdallProcess([upstream.addr], env=env) as srv:
            server = f"127.0.0.1:{srv.port}"
            rss0 = psutil.Process(srv.proc.pid).memory_info().rss
            flood_json = tmp_path / "flood.json"
            flood = subprocess.Popen([*CLI, "load", "--test-type", "cache-miss", "--zone", "victim.test",
                                      "--server", server, "--qps", "4000", "--duration", str(FLOOD_S),
                                      "--warmup", "0.5", "--clients", "50", "--timeout", "3000", "--quiet",
                                      "--json", str(flood_json)], cwd=REPO, stdout=subprocess.DEVNULL)
            try:
                legit = run_load(LoadConfig(test_type="cache-hit", server=server, qps=2000, clients=20,
                                            duration=FLOOD_S - 2, warmup=1.0))
            finally:
                assert flood.wait(timeout=60) == 0
            attack = json.loads(flood_json.read_text())
            metrics = scrape(hp)
            grown = psutil.Process(srv.proc.pid).memory_info().rss - rss0
            assert srv.stop() == 0
        received = victim.received
    lost = legit["sent"] - legit["received"]
    print(f"legitimate: {legit['received']} of {legit['sent']} answered, p99 {legit['latency_us']['p99']} us; "
          f"flood: {attack['sent']} sent, rcodes {attack['rcodes']}; victim's servers saw {received}; "
          f"{total(metrics, 'heimdall_inflight_limited_zone_total'):.0f} turned away at the zone bound; "
          f"RSS +{grown / 2**20:.1f} MB")
    assert grown < 16 * 2**20  # nothing of the flood is kept
    assert lost <= 0.01 * legit["sent"], legit
    assert legit["rcodes"] == {"NOERROR": legit["received"]}, legit["rcodes"]
    # the victim zone never had more than PER_ZONE queries waiting: each waits TIMEOUT_S at most
    windows = (FLOOD_S + 1) / TIMEOUT_S + 1
    assert received <= PER_ZONE * windows, (received, PER_ZONE * windows)
    assert attack["rcodes"].get("SERVFAIL", 0) > 0.9 * attack["received"], attack["rcodes"]
    assert total(metrics, "heimdall_inflight_limited_zone_total") > 0.8 * attack["sent"]


def immediate_servfails(port: int, source: str, names: list[str], wait: float = 1.5) -> int:
    """Each name asked once from its own socket on `source`: how many SERVFAILs come back at once."""
    import select
    import socket

    import dns.message

    socks = []
    for name in names:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        s.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", port))
        socks.append(s)
    got, deadline, waiting = 0, time.monotonic() + wait, list(socks)
    while (left := deadline - time.monotonic()) > 0:
        for s in select.select(waiting, [], [], left)[0]:
            got += s.recv(512)[3] & 0x0F == 2
            waiting.remove(s)
    for s in socks:
        s.close()
    return got


def test_one_client_holds_at_most_its_share_of_queries_waiting_upstream():
    """HEIMDALL_MAX_INFLIGHT_PER_CLIENT=10, a silent upstream: of 30 new names from one client 20 get
    SERVFAIL at once; another client's 5 still wait upstream like any miss."""
    env = {"HEIMDALL_MAX_INFLIGHT_PER_CLIENT": "10", "HEIMDALL_MAX_INFLIGHT_PER_ZONE": "0",
           "HEIMDALL_UPSTREAM_TIMEOUT": "5"}
    with CountingSilent() as silent, HeimdallProcess([silent.addr], env=env) as srv:
        greedy = immediate_servfails(srv.port, "127.0.0.2", [f"g{i}.bench.test" for i in range(30)])
        other = immediate_servfails(srv.port, "127.0.0.3", [f"o{i}.bench.test" for i in range(5)], wait=0.5)
        assert (greedy, other) == (20, 0)
        assert srv.stop() == 0


def test_a_flood_of_cacheable_one_off_names_does_not_push_popular_names_out():
    """A cache of 2,000 entries, 1,000 popular names asked at 1,500 q/s, and 3,000 q/s of unique names
    that the upstream answers NXDOMAIN (cacheable, and never asked again): the popular names stay
    cached, because a full cache takes a new name only when it is asked for a second time."""
    from tools.nsd import LocalUpstream

    hp = free_tcp_port()
    env = {"HEIMDALL_CACHE_CAPACITY": "2000", "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}
    with LocalUpstream() as nsd, HeimdallProcess([nsd.addr], env=env) as srv:
        server = f"127.0.0.1:{srv.port}"
        run_load(LoadConfig(test_type="cache-hit", server=server, duration=1, warmup=0.2, clients=20))  # popular
        before = total(scrape(hp), "heimdall_cache_misses_total")
        flood = subprocess.Popen([*CLI, "load", "--test-type", "cache-miss", "--server", server, "--qps", "3000",
                                  "--duration", "4", "--warmup", "0", "--clients", "50", "--quiet"],
                                 cwd=REPO, stdout=subprocess.DEVNULL)
        try:
            legit = run_load(LoadConfig(test_type="cache-hit", server=server, qps=1500, clients=20, duration=3,
                                        warmup=0.5, prime=False))
        finally:
            assert flood.wait(timeout=60) == 0
        time.sleep(1.2)  # the figures of the last second
        m = scrape(hp)
        misses = total(m, "heimdall_cache_misses_total") - before
        assert srv.stop() == 0
    flood_queries = 4 * 3000
    popular_misses = misses - flood_queries
    print(f"{legit['received']} popular-name answers; {misses:.0f} misses in all, {flood_queries} of them "
          f"the flood's; evictions {total(m, 'heimdall_cache_evictions_total'):.0f}, "
          f"not admitted {total(m, 'heimdall_cache_not_admitted_total'):.0f}")
    assert legit["received"] >= 0.99 * legit["sent"]
    assert total(m, "heimdall_cache_not_admitted_total") > 0.8 * flood_queries  # the full cache took none
    assert popular_misses < 0.05 * legit["sent"], (misses, legit["sent"])
