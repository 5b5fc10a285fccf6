"""Blocklists by URL end to end: a real HTTP server on loopback (tests/list_server.py) serves the
lists, a real `heimdall serve` downloads, refreshes and keeps them, a real NSD answers the rest.

The upstream answers every *.bench.test name NOERROR, so NXDOMAIN (the blocking mode here)
proves a block. Queries go from a fresh socket each, so with two workers SO_REUSEPORT spreads
them: "blocked" below means blocked in every worker.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.rcode
import pytest

from heimdall_server import HeimdallProcess
from list_server import POISON, ListServer
from test_http_e2e import free_tcp_port, get, scrape, total
from tools.nsd import free_port

LIST = b"# a list by URL\nads.bench.test\n0.0.0.0 tracker.bench.test\n||abp.bench.test^\n"
CHANGED = b"ads.bench.test\nfresh.bench.test\n"
ALLOW = b"ok.ads.bench.test\n"
MAX_BYTES = 100_000  # the oversized modes serve 200,000 bytes


@pytest.fixture
def web():
    with ListServer() as server:
        server.set("/block.txt", LIST)
        server.set("/allow.txt", ALLOW)
        yield server


def server(upstream, web: ListServer, state: Path, workers: int = 1, refresh: str = "1s",
           **env: str) -> tuple[HeimdallProcess, int]:
    hp = free_tcp_port()
    base = {"HEIMDALL_BLOCKLISTS": web.url("/block.txt"), "HEIMDALL_ALLOWLIST": web.url("/allow.txt"),
            "HEIMDALL_STATE_DIR": str(state), "HEIMDALL_BLOCKLIST_REFRESH": refresh,
            "HEIMDALL_BLOCKLIST_MAX_BYTES": str(MAX_BYTES), "HEIMDALL_BLOCKING_MODE": "nxdomain",
            "HEIMDALL_WORKER_THREADS": str(workers), "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}
    return HeimdallProcess([upstream.addr], env={**base, **env}), hp


def rcodes(srv: HeimdallProcess, name: str, n: int = 12) -> set[int]:
    return {srv.query(name).rcode() for _ in range(n)}


def blocked(srv: HeimdallProcess, name: str) -> bool:
    return rcodes(srv, name) == {dns.rcode.NXDOMAIN}


def answered(srv: HeimdallProcess, name: str) -> bool:
    return rcodes(srv, name) == {dns.rcode.NOERROR}


def until(predicate, seconds: float = 10.0) -> float:
    """Seconds it took for `predicate` to hold (fails after `seconds`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "condition not reached"
        time.sleep(0.1)
    return time.monotonic() - started


def fetches(hp: int, url: str, result: str | None = None) -> float:
    m = scrape(hp)
    return total(m, "heimdall_blocklist_fetch_total", url=url, **({"result": result} if result else {}))


def test_a_url_list_blocks_and_a_change_is_picked_up_within_the_refresh_interval(upstream, web, tmp_path):
    proc, hp = server(upstream, web, tmp_path / "state")
    with proc as srv:
        for name in ("ads.bench.test", "x.tracker.bench.test", "abp.bench.test"):
            assert blocked(srv, name), name
        assert answered(srv, "ok.ads.bench.test")  # the allowlist URL wins
        assert answered(srv, "fresh.bench.test")
        web.set("/block.txt", CHANGED)
        took = until(lambda: blocked(srv, "fresh.bench.test"))
        assert took < 1 + 2, took  # the 1 s refresh, a download and a reload
        assert answered(srv, "tracker.bench.test")  # gone from the list: the cached block answer was dropped
        url = web.url("/block.txt")
        assert f"blocklist {url}: updated (HTTP 200), downloaded {len(CHANGED)} bytes, 2 entries" in srv.log
        m = scrape(hp)
        assert total(m, "heimdall_blocklist_bytes", url=url) == len(CHANGED)
        assert total(m, "heimdall_blocklist_url_entries", url=url) == 2
        assert total(m, "heimdall_blocklist_url_entries", url=web.url("/allow.txt")) == 1


def test_304_keeps_the_list_and_the_counter_says_so(upstream, web, tmp_path):
    proc, hp = server(upstream, web, tmp_path / "state")
    url = web.url("/block.txt")
    with proc as srv:
        until(lambda: fetches(hp, url, "not_modified") >= 2)
        served = web.lists["/block.txt"]
        conditional = [r for r in web.seen("/block.txt")[1:] if r.status == 304]
        assert len(conditional) >= 2
        assert all((r.if_none_match, r.if_modified_since) == (served.etag, served.last_modified) for r in conditional)
        assert fetches(hp, url, "updated") == 1  # the first download only
        assert blocked(srv, "ads.bench.test")
        before = total(scrape(hp), "heimdall_blocklist_last_success_timestamp_seconds", url=url)
        until(lambda: total(scrape(hp), "heimdall_blocklist_last_success_timestamp_seconds", url=url) > before)
        assert "not_modified (HTTP 304), kept" in srv.log
        assert "blocklists reloaded" not in srv.log  # a 304 is not a reload


def test_bad_downloads_keep_the_good_list_and_are_counted(upstream, web, tmp_path):
    proc, hp = server(upstream, web, tmp_path / "state")
    url = web.url("/block.txt")
    with proc as srv:
        for mode, result in (("500", "http_error"), ("truncated", "truncated"), ("empty", "empty"),
                             ("oversized", "oversized"), ("oversized-stream", "oversized"), ("html", "empty")):
            counted = fetches(hp, url, result)
            web.modes["/block.txt"] = mode
            until(lambda: fetches(hp, url, result) > counted)  # noqa: B023 - called within this iteration
            assert blocked(srv, "ads.bench.test") and blocked(srv, "tracker.bench.test"), mode
            assert answered(srv, "poison0.bench.test"), mode
            assert total(scrape(hp), "heimdall_blocklist_bytes", url=url) == len(LIST)
        assert f"blocklist {url}: truncated (HTTP 200: {len(POISON) // 2} of {len(POISON)} bytes)" in srv.log
        assert "keeping the saved copy" in srv.log
        web.modes["/block.txt"] = "ok"
        web.set("/block.txt", CHANGED)
        until(lambda: blocked(srv, "fresh.bench.test"))  # and it recovers


def test_a_restart_without_the_http_server_starts_from_the_saved_copy(upstream, web, tmp_path):
    state = tmp_path / "state"
    proc, _ = server(upstream, web, state)
    with proc as srv:
        assert blocked(srv, "ads.bench.test")
    url = web.url("/block.txt")
    web.stop()  # nothing listens on its port any more
    proc, hp = server(upstream, web, state)
    with proc as srv:
        assert blocked(srv, "ads.bench.test") and answered(srv, "ok.ads.bench.test")
        assert f"blocklist {url}: error (no HTTP answer: " in srv.log
        assert "keeping the saved copy" in srv.log
        assert fetches(hp, url, "error") >= 1
        assert total(scrape(hp), "heimdall_blocklist_bytes", url=url) == len(LIST)


def test_a_url_without_download_or_saved_copy_refuses_to_start(upstream, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/block.txt"
    srv = HeimdallProcess([upstream.addr], env={"HEIMDALL_BLOCKLISTS": url, "HEIMDALL_STATE_DIR": str(tmp_path)})
    with pytest.raises(RuntimeError, match="exited with 3"):
        srv.start()
    assert f"error: {url}: not downloaded and no saved copy in {tmp_path}/lists" in srv.log


def test_an_unusable_state_dir_refuses_to_start(upstream, web, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    srv = HeimdallProcess([upstream.addr], env={"HEIMDALL_BLOCKLISTS": web.url("/block.txt"),
                                                "HEIMDALL_STATE_DIR": str(blocker)})
    with pytest.raises(RuntimeError, match="exited with 3"):
        srv.start()
    assert "cannot keep list downloads in" in srv.log and "HEIMDALL_STATE_DIR" in srv.log


def test_two_workers_download_once_per_refresh(upstream, web, tmp_path):
    proc, hp = server(upstream, web, tmp_path / "state", workers=2)
    url = web.url("/block.txt")
    with proc as srv:
        until(lambda: json_stats(hp)["workers"] == 2)
        start = len(web.seen("/block.txt"))
        time.sleep(5)
        made = len(web.seen("/block.txt")) - start
        worker0 = next(pid_of(line) for line in srv.log.splitlines() if "HTTP API on" in line)
        fetchers = {pid_of(line) for line in srv.log.splitlines() if f"blocklist {url}: " in line}
        assert fetchers == {srv.pid, worker0}, fetchers  # the supervisor at start, then worker 0 alone
        assert 3 <= made <= 7, made  # a 1 s refresh over 5 s: one worker's worth, not two
        time.sleep(1.5)  # figures are published each second
        counted = fetches(hp, url)
        assert len(web.seen("/block.txt")) - 2 <= counted <= len(web.seen("/block.txt")), counted
        assert total(scrape(hp), "heimdall_blocklist_bytes", url=url) == len(LIST)  # not 2x
        web.set("/block.txt", CHANGED)
        until(lambda: blocked(srv, "fresh.bench.test") and answered(srv, "tracker.bench.test"))


def test_api_refresh_and_sighup_refetch_the_urls(upstream, web, tmp_path):
    proc, hp = server(upstream, web, tmp_path / "state", workers=2, refresh="1h")
    url = web.url("/block.txt")
    with proc as srv:
        until(lambda: json_stats(hp)["workers"] == 2)
        web.set("/block.txt", CHANGED)
        time.sleep(1.5)
        assert answered(srv, "fresh.bench.test")  # 1 h refresh: not fetched on its own
        status, body = post(hp, "/api/lists/refresh")
        assert status == 200 and body["urls"] == {url: "updated", web.url("/allow.txt"): "not_modified"}, body
        until(lambda: blocked(srv, "fresh.bench.test") and answered(srv, "tracker.bench.test"), seconds=5)
        web.set("/block.txt", LIST)
        srv.signal(signal.SIGHUP)
        until(lambda: blocked(srv, "tracker.bench.test") and answered(srv, "fresh.bench.test"), seconds=5)
        assert len(web.seen("/block.txt")) == 3  # start, API, SIGHUP: one download each


def test_a_url_added_to_the_config_file_is_downloaded_on_sighup(upstream, web, tmp_path):
    web.set("/more.txt", b"more.bench.test\n")
    conf = tmp_path / "heimdall.toml"
    conf.write_text(f'[blocking]\nblocklists = ["{web.url("/block.txt")}"]\n')
    env = {"HEIMDALL_CONFIG": str(conf), "HEIMDALL_STATE_DIR": str(tmp_path / "state"), "HEIMDALL_WORKER_THREADS": "2",
           "HEIMDALL_BLOCKING_MODE": "nxdomain", "HEIMDALL_BLOCKLIST_REFRESH": "1h"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        assert blocked(srv, "ads.bench.test") and answered(srv, "more.bench.test")
        conf.write_text(f'[blocking]\nblocklists = ["{web.url("/block.txt")}", "{web.url("/more.txt")}"]\n')
        srv.signal(signal.SIGHUP)
        until(lambda: blocked(srv, "more.bench.test") and blocked(srv, "ads.bench.test"))
        seen = web.seen("/more.txt")
        # worker 0's timer may find the new URL due just before the SIGHUP's round: then the second is a 304
        assert seen[0].status == 200 and all(r.status == 304 for r in seen[1:2]) and len(seen) <= 2, seen
        assert "reload failed" not in srv.log  # the other workers waited for worker 0's copy


def pid_of(line: str) -> int:
    """The pid of a text log line, `heimdall[PID] LEVEL: message`."""
    return int(line.split("[", 1)[1].split("]", 1)[0])


def json_stats(hp: int) -> dict:
    status, body = get(hp, "/stats")
    return json.loads(body) if status == 200 else {}


def post(hp: int, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{hp}{path}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
