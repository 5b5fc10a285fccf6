"""List URLs: the download rules (heimdall/listfetch.py), the keep rules and saved copies
(heimdall/subscriptions.py, heimdall/liststore.py), against a real HTTP server on loopback."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from heimdall.blocklist import BlocklistError, BlocklistManager
from heimdall.listfetch import Validators, fetch_url, is_url, redact
from heimdall.liststore import ListStore, default_state_dir
from heimdall.metrics import Snapshot, merge
from heimdall.prometheus import HeimdallCollector
from heimdall.subscriptions import RETRY_AFTER_FAILURE, Subscriptions
from list_server import POISON, ListServer

LIST = b"# test list\nads.bench.test\n0.0.0.0 tracker.bench.test\n||abp.bench.test^\n"
CHANGED = b"other.bench.test\nads.bench.test\n"


@pytest.fixture
def web():
    with ListServer() as server:
        server.set("/list.txt", LIST)
        yield server


def subs_in(tmp_path: Path, **kw) -> Subscriptions:
    return Subscriptions(ListStore(str(tmp_path / "state")), **kw)


# --- one download --------------------------------------------------------------------------

def test_a_whole_body_with_its_validators(web):
    d = fetch_url(web.url("/list.txt"))
    assert (d.result, d.status, d.body) == ("ok", 200, LIST)
    served = web.lists["/list.txt"]
    assert d.validators == Validators(served.etag, served.last_modified)
    assert web.seen("/list.txt")[0].if_none_match is None  # no validators: an unconditional GET


def test_conditional_request_gets_304_and_the_server_saw_both_validators(web):
    served = web.lists["/list.txt"]
    d = fetch_url(web.url("/list.txt"), Validators(served.etag, served.last_modified))
    assert (d.result, d.status, d.body) == ("not_modified", 304, b"")
    seen = web.seen("/list.txt")[-1]
    assert (seen.if_none_match, seen.if_modified_since, seen.status) == (served.etag, served.last_modified, 304)
    assert d.validators == Validators(served.etag, served.last_modified)


def test_if_modified_since_alone_gets_304_and_changed_content_gets_200(web):
    old = web.lists["/list.txt"]
    assert fetch_url(web.url("/list.txt"), Validators("", old.last_modified)).result == "not_modified"
    web.set("/list.txt", CHANGED)
    d = fetch_url(web.url("/list.txt"), Validators(old.etag, old.last_modified))
    assert (d.result, d.body) == ("ok", CHANGED)


@pytest.mark.parametrize("mode, result, status", [
    ("500", "http_error", 500), ("truncated", "truncated", 200), ("oversized", "oversized", 200),
    ("oversized-stream", "oversized", 200), ("empty", "empty", 200)])
def test_failures_say_what_went_wrong_and_carry_no_body(web, mode, result, status):
    web.modes["/list.txt"] = mode
    d = fetch_url(web.url("/list.txt"), max_bytes=100_000)
    assert (d.result, d.status, d.body) == (result, status, b""), d
    assert d.failed and d.detail


def test_oversized_stream_stops_reading_at_the_cap(web):
    web.modes["/list.txt"] = "oversized-stream"
    web.oversize = 5_000_000
    d = fetch_url(web.url("/list.txt"), max_bytes=300_000)
    assert d.result == "oversized" and 300_000 < d.received < 300_000 + 1_000_000


def test_404_refused_connection_and_timeout(web):
    assert fetch_url(web.url("/missing.txt")).result == "http_error"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    d = fetch_url(f"http://127.0.0.1:{port}/list.txt")
    assert (d.result, d.status) == ("error", 0) and "refused" in d.detail.lower(), d
    web.modes["/list.txt"] = "hang"
    started = time.monotonic()
    d = fetch_url(web.url("/list.txt"), timeout=0.5)
    assert d.result == "error" and "timed out" in d.detail and time.monotonic() - started < 5


def test_a_body_that_never_ends_is_bounded_by_the_whole_timeout():
    """A server that trickles a byte at a time stays under any per-read timeout; the total one ends it."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = lsock.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b"a")
            except OSError:
                break
            time.sleep(0.05)
        conn.close()

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        d = fetch_url(f"http://127.0.0.1:{lsock.getsockname()[1]}/x", timeout=1.0)
        assert d.result == "error" and "timed out" in d.detail and time.monotonic() - started < 3, d
    finally:
        stop.set()
        lsock.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "key.pem",
                    "-out", d / "cert.pem", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_tls_is_verified_by_default_and_redirects_never_drop_to_http(tls_files, web):
    cert, key = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with ListServer(tls=ctx) as tls:
        tls.set("/list.txt", LIST)
        d = fetch_url(tls.url("/list.txt"), timeout=5)
        assert d.result == "error" and "certificate" in d.detail.lower(), d  # self-signed: refused
        trusting = ssl.create_default_context(cafile=str(cert))
        assert fetch_url(tls.url("/list.txt"), context=trusting).body == LIST
        tls.redirects["/redirect"] = web.url("/list.txt")
        d = fetch_url(tls.url("/redirect"), context=trusting)
        assert d.result == "error" and "refused redirect" in d.detail, d
    web.redirects["/redirect"] = "/list.txt"  # http -> http is followed
    assert fetch_url(web.url("/redirect")).body == LIST


def test_urls_and_redaction():
    assert is_url("https://x/y") and is_url("HTTP://x") and not is_url("/etc/x.txt") and not is_url("httpfile")
    assert redact("https://user:secret@lists.example:8443/a?b=1") == "https://lists.example:8443/a?b=1"
    assert redact("https://lists.example/a") == "https://lists.example/a"


# --- the keep rules and the saved copy ------------------------------------------------------

def test_first_download_is_saved_with_its_validators_then_304_keeps_it(web, tmp_path):
    subs = subs_in(tmp_path)
    url = web.url("/list.txt")
    assert subs.check(url) == "updated"
    copy = Path(subs.store.copy_path(url))
    assert copy.read_bytes() == LIST
    meta = json.loads(Path(subs.store.meta_path(url)).read_text())
    served = web.lists["/list.txt"]
    assert (meta["etag"], meta["last_modified"], meta["bytes"], meta["entries"]) == \
        (served.etag, served.last_modified, len(LIST), 3)
    mtime = copy.stat().st_mtime_ns
    assert subs.check(url) == "not_modified"
    assert copy.stat().st_mtime_ns == mtime  # not rewritten: no worker reloads
    seen = web.seen("/list.txt")[-1]
    assert (seen.status, seen.if_none_match, seen.if_modified_since) == (304, served.etag, served.last_modified)
    s = subs.status[url]
    assert (s.fetches["updated"], s.fetches["not_modified"], s.bytes, s.entries) == (1, 1, len(LIST), 3)


def test_changed_content_replaces_the_copy(web, tmp_path):
    subs = subs_in(tmp_path)
    url = web.url("/list.txt")
    subs.check(url)
    web.set("/list.txt", CHANGED)
    assert subs.check(url) == "updated"
    assert Path(subs.store.copy_path(url)).read_bytes() == CHANGED
    assert subs.status[url].entries == 2


def test_same_bytes_without_validators_is_unchanged_and_not_rewritten(web, tmp_path):
    web.set("/plain.txt", LIST, validators=False)
    subs = subs_in(tmp_path)
    url = web.url("/plain.txt")
    assert subs.check(url) == "updated"
    mtime = os.stat(subs.store.copy_path(url)).st_mtime_ns
    assert subs.check(url) == "unchanged"
    assert os.stat(subs.store.copy_path(url)).st_mtime_ns == mtime
    assert web.seen("/plain.txt")[-1].if_none_match is None  # nothing to be conditional with


@pytest.mark.parametrize("mode, result", [("500", "http_error"), ("truncated", "truncated"),
                                          ("oversized", "oversized"), ("oversized-stream", "oversized"),
                                          ("empty", "empty"), ("html", "empty")])
def test_a_bad_download_never_replaces_the_good_copy(web, tmp_path, mode, result, caplog):
    subs = subs_in(tmp_path, max_bytes=100_000)
    url = web.url("/list.txt")
    assert subs.check(url) == "updated"
    good = subs.status[url].last_success
    web.modes["/list.txt"] = mode
    caplog.set_level("INFO", logger="heimdall.lists")
    assert subs.check(url) == result
    assert Path(subs.store.copy_path(url)).read_bytes() == LIST
    s = subs.status[url]
    assert (s.fetches[result], s.bytes, s.entries, s.last_success) == (1, len(LIST), 3, good)
    line = caplog.records[-1].getMessage()
    assert url in line and result in line and "keeping the saved copy" in line, line
    assert POISON[:10] not in Path(subs.store.copy_path(url)).read_bytes()


def test_one_log_line_per_fetch_with_status_bytes_entries_and_time(web, tmp_path, caplog):
    caplog.set_level("INFO", logger="heimdall.lists")
    subs_in(tmp_path).check(web.url("/list.txt"))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "heimdall.lists"]
    assert line.startswith(f"blocklist {web.url('/list.txt')}: updated (HTTP 200)")
    assert f"{len(LIST)} bytes, 3 entries" in line and line.endswith("s")


def test_a_copy_that_does_not_match_its_metadata_is_kept_but_not_trusted_for_304(web, tmp_path):
    subs = subs_in(tmp_path)
    url = web.url("/list.txt")
    subs.check(url)
    Path(subs.store.copy_path(url)).write_bytes(b"ads.bench.test\nedited.bench.test\n")  # not what the meta says
    assert subs.check(url) == "updated"
    assert web.seen("/list.txt")[-1].if_none_match is None  # validators dropped: a full download
    assert Path(subs.store.copy_path(url)).read_bytes() == LIST


def test_schedule_refresh_after_success_and_sooner_after_failure(web, tmp_path):
    subs = subs_in(tmp_path, refresh=4 * 3600)
    url = web.url("/list.txt")
    subs.check(url)
    assert 4 * 3600 - 5 < subs.seconds_until_due([url]) <= 4 * 3600
    web.modes["/list.txt"] = "500"
    subs.check(url)
    assert RETRY_AFTER_FAILURE - 5 < subs.seconds_until_due([url]) <= RETRY_AFTER_FAILURE
    assert subs.refresh_urls([url]) == {}  # not due: nothing fetched
    assert set(subs.refresh_urls([url], force=True)) == {url}


def test_several_urls_are_fetched_together(web, tmp_path):
    for i in range(6):
        web.set(f"/l{i}.txt", b"n%d.bench.test\n" % i)
    urls = [web.url(f"/l{i}.txt") for i in range(6)]
    assert Subscriptions(ListStore(str(tmp_path))).refresh_urls(urls, force=True) == dict.fromkeys(urls, "updated")


# --- the manager: URLs beside files, start without network, reload rules ---------------------

def test_url_lists_block_beside_files_and_a_restart_without_network_uses_the_copy(web, tmp_path):
    web.set("/allow.txt", b"ok.ads.bench.test\n")
    local = tmp_path / "local.txt"
    local.write_text("local.bench.test\n")
    block, allow = [str(local), web.url("/list.txt")], [web.url("/allow.txt")]
    manager = BlocklistManager(block, allow, subs_in(tmp_path))
    assert manager.fetch() == {web.url("/list.txt"): "updated", web.url("/allow.txt"): "updated"}
    lists = manager.load()
    assert all(lists.match_name(n) for n in ("local.bench.test", "x.ads.bench.test", "abp.bench.test"))
    assert not lists.match_name("ok.ads.bench.test")
    web.stop()
    again = BlocklistManager(block, allow, subs_in(tmp_path))
    assert set(again.fetch().values()) == {"error"}
    assert again.load().match_name("tracker.bench.test") and not again.current.match_name("ok.ads.bench.test")


def test_a_url_never_downloaded_is_a_load_error(tmp_path):
    manager = BlocklistManager(["http://127.0.0.1:9/none.txt"], (), subs_in(tmp_path))
    assert manager.fetch() == {"http://127.0.0.1:9/none.txt": "error"}
    with pytest.raises(BlocklistError, match="not downloaded and no saved copy"):
        manager.load()
    with pytest.raises(BlocklistError, match="needs the server"):
        BlocklistManager(["http://127.0.0.1:9/none.txt"]).load()


def test_copies_changed_follows_new_copies_and_does_not_retry_a_failed_reload(web, tmp_path):
    url = web.url("/list.txt")
    manager = BlocklistManager([url], (), subs_in(tmp_path))
    manager.fetch()
    manager.load()
    assert not manager.copies_changed()
    web.set("/list.txt", CHANGED)
    manager.fetch()
    assert manager.copies_changed() and manager.reload() and not manager.copies_changed()
    assert manager.current.match_name("other.bench.test")
    web.set("/new.txt", b"new.bench.test\n")
    new = web.url("/new.txt")
    manager.block_files.append(new)  # as a re-read config file may do
    assert not manager.copies_changed()  # nothing to load before its first download
    assert not manager.reload()  # (a SIGHUP now: no copy of the new URL, so the old lists stay ...)
    assert not manager.copies_changed()  # ... and that is not tried again every second
    assert manager.current.match_name("other.bench.test")
    manager.fetch()
    assert manager.copies_changed() and manager.reload() and manager.current.match_name("new.bench.test")


def test_adopt_saved_takes_figures_and_schedule_from_disk(web, tmp_path):
    url = web.url("/list.txt")
    subs_in(tmp_path, refresh=100).check(url)
    fresh = subs_in(tmp_path, refresh=100)  # a restarted worker 0
    fresh.adopt_saved([url])
    s = fresh.status[url]
    assert (s.bytes, s.entries) == (len(LIST), 3) and s.last_success > 0
    assert 90 < fresh.seconds_until_due([url]) <= 100


def test_default_state_dir(tmp_path):
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/heimdall:/other"}) == "/var/lib/heimdall"
    got = default_state_dir({"HOME": str(tmp_path)})
    system = Path("/var/lib/heimdall")
    if (system.exists() and os.access(system, os.W_OK)) or (not system.exists() and os.access("/var/lib", os.W_OK)):
        assert got == "/var/lib/heimdall"
    else:
        assert got == str(tmp_path / ".local" / "state" / "heimdall")


# --- metrics: per-URL figures are one worker's, not a sum ------------------------------------

def test_url_figures_are_not_multiplied_by_the_workers():
    figures = {"fetches": {"updated": 1, "not_modified": 3}, "bytes": 1000, "entries": 10,
               "last_success": 1.7e9, "last_result": "not_modified"}
    leader = Snapshot(lists={"https://l/x": figures}, pid=1)
    other = Snapshot(pid=2)
    merged = merge([Snapshot.from_json(leader.to_json()), other, Snapshot(pid=3)])
    assert merged.lists == {"https://l/x": figures} and merged.workers == 3
    stale = Snapshot(lists={"https://l/x": {**figures, "fetches": {"updated": 1}, "bytes": 5}})
    assert merge([stale, leader]).lists["https://l/x"]["bytes"] == 1000  # the one with more fetches wins
    fams = {f.name: f for f in HeimdallCollector(lambda: merged).collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples if "url" in s.labels}
    assert samples[("heimdall_blocklist_fetch_total", (("result", "not_modified"), ("url", "https://l/x")))] == 3
    assert samples[("heimdall_blocklist_bytes", (("url", "https://l/x"),))] == 1000
    assert samples[("heimdall_blocklist_url_entries", (("url", "https://l/x"),))] == 10
    assert samples[("heimdall_blocklist_last_success_timestamp_seconds", (("url", "https://l/x"),))] == 1.7e9
