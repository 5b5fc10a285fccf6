"""Client groups: each group's own lists and block answer; the cache shared only where answers agree.

Clients are told apart by source address (127.0.0.1: the default group,
127.0.0.2: "kids"). The order of queries is chosen so that an answer cached
for one group and served to the other would show.
"""

from __future__ import annotations

import json
import signal
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from heimdall.config import ConfigError, load_config
from heimdall_server import HeimdallProcess
from test_control_api import call
from test_http_e2e import free_tcp_port, scrape, total

ADULT, KID = "127.0.0.1", "127.0.0.2"


def ask(srv: HeimdallProcess, name: str, source: str) -> str:
    """The answer as text: an address, or the rcode's name."""
    r = dns.query.udp(dns.message.make_query(name, "A"), srv.address, port=srv.port, timeout=3, source=source)
    if r.rcode() != dns.rcode.NOERROR or not r.answer:
        return dns.rcode.to_text(r.rcode())
    return r.answer[0][0].to_text()


def grouped_server(upstream, tmp_path, workers: str) -> tuple[HeimdallProcess, int, object]:
    default_list, kids_list = tmp_path / "default.txt", tmp_path / "kids.txt"
    default_list.write_text("ads.bench.test\n")
    kids_list.write_text("games.bench.test\n")
    groups = {"kids": {"clients": [f"{KID}/32"], "blocklists": [str(kids_list)], "blocking_mode": "nxdomain"}}
    hp = free_tcp_port()
    env = {"HEIMDALL_BLOCKLISTS": str(default_list), "HEIMDALL_CLIENT_GROUPS": json.dumps(groups),
           "HEIMDALL_WORKER_THREADS": workers, "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}
    return HeimdallProcess([upstream.addr], env=env), hp, kids_list


@pytest.fixture(params=["1", "2"], ids=["one-process", "two-workers"])
def server(request, upstream, tmp_path):
    proc, hp, kids_list = grouped_server(upstream, tmp_path, request.param)
    with proc as srv:
        yield srv, hp, kids_list


def test_each_group_gets_its_own_lists_and_answer(server):
    srv, _, _ = server
    for _ in range(3):  # the first asks resolve or block; the rest come from the cache
        assert ask(srv, "games.bench.test", ADULT) == "192.0.2.1"
        assert ask(srv, "games.bench.test", KID) == "NXDOMAIN"
        assert ask(srv, "ads.bench.test", KID) == "192.0.2.1"
        assert ask(srv, "ads.bench.test", ADULT) == "0.0.0.0"


def test_names_on_no_list_share_one_cache_entry(upstream, tmp_path):
    proc, hp, _ = grouped_server(upstream, tmp_path, "1")  # one cache: with two, each worker has its own
    with proc as srv:
        check_shared(srv, hp)


def check_shared(srv: HeimdallProcess, hp: int) -> None:
    assert ask(srv, "w1.bench.test", ADULT) == "192.0.2.1"
    for _ in range(5):
        assert ask(srv, "w1.bench.test", KID) == "192.0.2.1"
    deadline = time.monotonic() + 10
    while total(m := scrape(hp), "heimdall_queries_total") < 6:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert total(m, "heimdall_cache_misses_total") == 1, m  # the kid's five queries were cache hits


def test_a_reload_moves_names_between_shared_and_group_answers(server):
    srv, _, kids_list = server
    assert ask(srv, "news.bench.test", ADULT) == "192.0.2.1"  # on no list: cached under the shared key
    assert ask(srv, "news.bench.test", KID) == "192.0.2.1"
    kids_list.write_text("games.bench.test\nnews.bench.test\n")
    srv.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while ask(srv, "news.bench.test", KID) != "NXDOMAIN":
        assert time.monotonic() < deadline, srv.log
        time.sleep(0.1)
    for _ in range(3):
        assert ask(srv, "news.bench.test", KID) == "NXDOMAIN"
        assert ask(srv, "news.bench.test", ADULT) == "192.0.2.1"


def test_pausing_blocking_pauses_every_group(server):
    srv, hp, _ = server
    assert ask(srv, "games.bench.test", KID) == "NXDOMAIN"
    assert call(hp, "POST", "/api/blocking/disable")[0] == 200
    assert ask(srv, "games.bench.test", KID) == "192.0.2.1" and ask(srv, "ads.bench.test", ADULT) == "192.0.2.1"
    assert call(hp, "POST", "/api/blocking/enable")[0] == 200
    assert ask(srv, "games.bench.test", KID) == "NXDOMAIN" and ask(srv, "ads.bench.test", ADULT) == "0.0.0.0"


def test_pausing_one_group_leaves_the_others_blocking(server):
    srv, hp, _ = server
    assert ask(srv, "games.bench.test", KID) == "NXDOMAIN" and ask(srv, "ads.bench.test", ADULT) == "0.0.0.0"
    status, body = call(hp, "POST", "/api/blocking/disable?group=kids&duration=1h")
    assert status == 200 and body["acknowledged"] == body["workers"], body
    groups = body["blocking"]["groups"]
    assert body["blocking"]["enabled"] and groups["default"]["enabled"], body
    assert not groups["kids"]["enabled"] and 3590 < groups["kids"]["remaining_s"] <= 3600, body
    for _ in range(3):  # every worker: the kids' list is off, the default list is not
        assert ask(srv, "games.bench.test", KID) == "192.0.2.1"
        assert ask(srv, "ads.bench.test", ADULT) == "0.0.0.0"
    assert call(hp, "POST", "/api/blocking/disable?group=default")[0] == 200
    assert ask(srv, "ads.bench.test", ADULT) == "192.0.2.1"
    status = call(hp, "GET", "/api/blocking/status")[1]
    assert status["enabled"] and not status["groups"]["default"]["enabled"], status  # not every group is paused
    assert status["groups"]["default"]["disabled_until"] is None  # until enabled again
    assert call(hp, "POST", "/api/blocking/enable?group=kids")[0] == 200
    assert ask(srv, "games.bench.test", KID) == "NXDOMAIN" and ask(srv, "ads.bench.test", ADULT) == "192.0.2.1"
    assert call(hp, "POST", "/api/blocking/enable")[0] == 200  # every pause ends
    assert ask(srv, "ads.bench.test", ADULT) == "0.0.0.0"
    assert call(hp, "GET", "/api/blocking/status")[1]["groups"] == {
        g: {"enabled": True, "disabled_until": None, "remaining_s": None} for g in ("default", "kids")}


def test_pausing_a_group_that_does_not_exist_is_a_400(server):
    _, hp, _ = server
    status, body = call(hp, "POST", "/api/blocking/disable?group=teens&duration=5m")
    assert status == 400 and "no client group 'teens'" in body["error"] and "default, kids" in body["error"], body


@pytest.mark.parametrize("groups, words", [
    ('{"kids": {"clients": ["10.0.0.300/8"]}}', "10.0.0.300"),
    ('{"kids": {"clients": []}}', "has no clients"),
    ('{"kids": {"clients": ["10.0.0.0/8"], "mode": "nxdomain"}}', "unknown key(s) mode"),
    ('{"kids": {"clients": ["10.0.0.0/8"], "blocking_mode": "sinkhole"}}', "sinkhole"),
    ('{"Default": {"clients": ["10.0.0.0/8"]}}', "group name"),
    ('["kids"]', "object of groups"),
])
def test_bad_groups_are_config_errors(groups, words):
    with pytest.raises(ConfigError, match="HEIMDALL_CLIENT_GROUPS") as err:
        load_config([], {"HEIMDALL_CLIENT_GROUPS": groups})
    assert words in str(err.value)


def test_groups_as_a_config_file_table(tmp_path):
    path = tmp_path / "h.toml"
    path.write_text('[blocking]\nblocking_mode = "zero_ip"\n\n[blocking.client_groups.kids]\n'
                    'clients = ["192.168.1.0/24"]\nblocklists = ["/etc/heimdall/kids.txt"]\n')
    (group,) = load_config(["--config", str(path)], {}).client_groups
    assert group.name == "kids" and str(group.clients[0]) == "192.168.1.0/24"
    path.write_text('[blocking]\n\n[blocking.client_groups.kids]\nclients = ["192.168.1.300/24"]\n')
    with pytest.raises(ConfigError, match=r":3: \[blocking\] client_groups: .*192.168.1.300"):
        load_config(["--config", str(path)], {})
