"""SIGHUP with a config file changes forwarding rules, client groups and rate limits live, under load.

Real parts: `heimdall serve --config FILE` with one and two workers, the session's NSD as the default
upstream, more NSDs for the forward zones (tests/test_forward_zones.py), dnspython clients from two
loopback source addresses for the groups, and a closed-loop load that must lose nothing while the
file is re-read.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from closed_loop import ClosedLoop
from heimdall_server import HeimdallProcess
from test_client_groups import ADULT, KID, ask
from test_forward_zones import a_records, b_lan_nsd, lan_nsd  # noqa: F401 (fixtures)

WORKERS = pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "two-workers"])


def until(check, srv: HeimdallProcess, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, srv.log
        time.sleep(0.1)


def reread(srv: HeimdallProcess, conf: Path, text: str) -> None:
    """Write the file and SIGHUP; returns once the server logged the re-read."""
    seen = srv.log.count("re-read")
    conf.write_text(text)
    srv.signal(signal.SIGHUP)
    until(lambda: srv.log.count("re-read") > seen, srv)


def under_load(srv: HeimdallProcess, names: list[str]) -> ClosedLoop:
    return ClosedLoop(srv.address, srv.port, lambda c, s: (names[(c + s) % len(names)], "any"), clients=4, gap=0.005)


def assert_none_lost(load: ClosedLoop) -> None:
    recs = load.stop()
    assert recs and not [r for r in recs if r.lost], f"{sum(r.lost for r in recs)} of {len(recs)} lost"


@WORKERS
def test_forward_zones_change_live_and_their_cached_answers_go(tmp_path, upstream, lan_nsd, b_lan_nsd, workers):
    conf = tmp_path / "h.toml"
    head = f'[upstream]\nupstream_servers = ["{upstream.addr}"]\n[forward]\nlan = "{lan_nsd.addr}"\n'
    conf.write_text(head)
    with HeimdallProcess([], args=["--config", str(conf)], env={"HEIMDALL_WORKER_THREADS": workers}) as srv:
        for _ in range(4):  # cached in every worker that a fresh source port lands on
            assert a_records(srv.query("a.b.lan")) == ["10.0.0.2"]  # lan's own a.b
        with under_load(srv, ["x.lan", "www.example.test", "a.b.lan"]) as load:
            time.sleep(0.3)
            reread(srv, conf, head + f'"b.lan" = "{b_lan_nsd.addr}"\n')
            until(lambda: all(a_records(srv.query("a.b.lan")) == ["10.0.0.3"] for _ in range(6)), srv)
            time.sleep(0.3)
        assert_none_lost(load)
        assert a_records(srv.query("x.lan")) == ["10.0.0.1"]  # lan kept its pool
        reread(srv, conf, f'[upstream]\nupstream_servers = ["{upstream.addr}"]\n')  # no zones at all
        until(lambda: not a_records(srv.query("x.lan")), srv)  # the default upstream has no lan zone
        assert a_records(srv.query("www.example.test")) == ["192.0.2.10"]
        assert srv.stop() == 0
        log = srv.log
    assert "forward_zones changed live" in log and "forward zones changed: b.lan" in log, log


def groups_file(conf: Path, upstream: str, kids_list: Path, kids: str | None) -> str:
    text = f'[upstream]\nupstream_servers = ["{upstream}"]\n'
    if kids is not None:
        text += (f'[blocking.client_groups.kids]\nclients = ["{kids}/32"]\nblocklists = ["{kids_list}"]\n'
                 'blocking_mode = "nxdomain"\n')
    return text


@WORKERS
def test_client_groups_come_move_and_go_live(tmp_path, upstream, workers):
    conf, kids_list = tmp_path / "h.toml", tmp_path / "kids.txt"
    kids_list.write_text("games.bench.test\n")
    conf.write_text(groups_file(conf, upstream.addr, kids_list, None))
    with HeimdallProcess([], args=["--config", str(conf)], env={"HEIMDALL_WORKER_THREADS": workers}) as srv:
        for who in (ADULT, KID, ADULT, KID):  # cached under the shared key, in whichever worker
            assert ask(srv, "games.bench.test", who) == "192.0.2.1"
        with under_load(srv, ["w1.bench.test", "games.bench.test", "www.example.test"]) as load:
            reread(srv, conf, groups_file(conf, upstream.addr, kids_list, KID))
            until(lambda: all(ask(srv, "games.bench.test", KID) == "NXDOMAIN" for _ in range(6)), srv)
            assert all(ask(srv, "games.bench.test", ADULT) == "192.0.2.1" for _ in range(6))
            reread(srv, conf, groups_file(conf, upstream.addr, kids_list, ADULT))  # the group's clients change
            until(lambda: all(ask(srv, "games.bench.test", ADULT) == "NXDOMAIN" for _ in range(6)), srv)
            assert all(ask(srv, "games.bench.test", KID) == "192.0.2.1" for _ in range(6))
        assert_none_lost(load)
        broken = groups_file(conf, upstream.addr, tmp_path / "missing.txt", KID)
        reread(srv, conf, broken)  # a list that does not load: the groups in force stay
        until(lambda: "client groups not changed" in srv.log, srv)
        assert all(ask(srv, "games.bench.test", ADULT) == "NXDOMAIN" for _ in range(6))
        reread(srv, conf, groups_file(conf, upstream.addr, kids_list, None))
        until(lambda: all(ask(srv, "games.bench.test", who) == "192.0.2.1" for who in (ADULT, KID) * 3), srv)
        assert srv.stop() == 0


def burst(srv: HeimdallProcess, n: int, timeout: float = 0.5) -> dict[str, int]:
    """n queries back to back from one client: how many got each rcode (or no answer)."""
    seen: dict[str, int] = {}
    for i in range(n):
        try:
            r = dns.query.udp(dns.message.make_query("www.example.test", "A"), srv.address, port=srv.port,
                              timeout=timeout, source=ADULT)
            rcode = dns.rcode.to_text(r.rcode())
        except dns.exception.Timeout:
            rcode = "none"
        seen[rcode] = seen.get(rcode, 0) + 1
    return seen


def test_rate_limits_change_live(tmp_path, upstream):
    conf = tmp_path / "h.toml"
    head = f'[upstream]\nupstream_servers = ["{upstream.addr}"]\n'
    conf.write_text(head)
    with HeimdallProcess([], args=["--config", str(conf)]) as srv:
        assert burst(srv, 40) == {"NOERROR": 40}
        limited = head + ('[ratelimit]\nenable_rate_limiting = true\nqueries_per_second_per_ip = 0.1\n'
                          'burst_size_per_ip = 10\nrate_limit_action = "refused"\n')
        reread(srv, conf, limited)
        seen = burst(srv, 40)  # a full bucket of 10, then one every 10 s
        assert seen.get("REFUSED", 0) >= 25 and 10 <= seen.get("NOERROR", 0) < 15, seen
        reread(srv, conf, limited.replace('"refused"', '"drop"'))
        seen = burst(srv, 20, timeout=0.3)  # a new limiter: a full bucket again, then silence
        assert seen.get("none", 0) >= 8 and "REFUSED" not in seen, seen
        reread(srv, conf, head)
        assert burst(srv, 40) == {"NOERROR": 40}
        assert srv.stop() == 0
        log = srv.log
    lines = [line for line in log.splitlines() if "re-read" in line]
    assert "enable_rate_limiting" in lines[0] and "rate_limit_action changed live" in lines[1], lines
    assert "needs a restart" not in log, log


def test_names_what_still_needs_a_restart(tmp_path, upstream):
    conf = tmp_path / "h.toml"
    conf.write_text(f'[upstream]\nupstream_servers = ["{upstream.addr}"]\n')
    with HeimdallProcess([], args=["--config", str(conf)]) as srv:
        reread(srv, conf, f'[upstream]\nupstream_servers = ["{upstream.addr}"]\nupstream_timeout = 3.0\n'
                          '[cache]\ncache_capacity = 500\n')
        assert srv.stop() == 0
        line = next(line for line in srv.log.splitlines() if "re-read" in line)
    assert "nothing changed live; needs a restart: cache_capacity, upstream_timeout" in line, line
