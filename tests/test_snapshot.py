"""HEIMDALL_CACHE_FILE: the cache survives restarts with aged TTLs; bad snapshots are ignored with a warning."""

from __future__ import annotations

import os
import re
import signal
import time

import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall import snapshot
from heimdall.cache import Cache
from heimdall_server import HeimdallProcess
from udp_responder import UdpResponder


class DeadUpstream(UdpResponder):
    """A UDP socket that counts queries and never answers (the upstream is 'down')."""

    def __init__(self) -> None:
        self.names: list[bytes] = []

    def handle(self, data: bytes, src: tuple) -> None:
        self.names.append(data[12:-15].lower())

    def asked(self, label: str) -> bool:
        return any(label.encode() in n for n in self.names)


def ttl_of(msg) -> int:
    return msg.answer[0].ttl if msg.answer else msg.authority[0].ttl


def fill(srv: HeimdallProcess) -> dict[str, object]:
    got = {}
    for name, rdtype in [("www.example.test", "A"), ("long.example.test", "A"), ("multi.example.test", "A"),
                         ("short.example.test", "A"), ("nope.example.test", "A"), ("www.example.test", "AAAA")]:
        r = srv.query(name, rdtype)
        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
        got[f"{name}/{rdtype}"] = r
    return got


def test_restart_restores_cache_with_aged_ttls_and_drops_expired(upstream, tmp_path):
    path = str(tmp_path / "cache.snap")
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_CACHE_FILE": path}) as srv:
        before = fill(srv)
        assert srv.stop() == 0
        assert "saved 6 entries" in srv.log, srv.log
    stopped = time.monotonic()
    assert os.path.exists(path) and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    time.sleep(2.2)  # short.example.test (TTL 1) expires; the others age by >= 2 s
    with DeadUpstream() as dead, HeimdallProcess([dead.addr], env={"HEIMDALL_CACHE_FILE": path},
                                                 args=["--upstream-timeout", "0.3"]) as srv:
        assert "restored 5 entries (1 expired, dropped)" in srv.log, srv.log
        for key in ("www.example.test/A", "long.example.test/A", "multi.example.test/A", "www.example.test/AAAA",
                    "nope.example.test/A"):
            name, rdtype = key.split("/")
            r = srv.query(name, rdtype)
            old = before[key]
            assert r.rcode() == old.rcode()
            assert sorted(map(str, r.answer)) != [] or r.rcode() == dns.rcode.NXDOMAIN
            assert {rr.to_text() for rrs in r.answer for rr in rrs} == {rr.to_text() for rrs in old.answer
                                                                        for rr in rrs}
            waited = time.monotonic() - stopped
            assert ttl_of(old) - waited - 2 <= ttl_of(r) <= ttl_of(old) - 2, (key, ttl_of(old), ttl_of(r), waited)
        assert dead.names == [], "restored names must not be asked upstream"
        r = srv.query("short.example.test")  # expired in the snapshot: asked upstream (which is down)
        assert r.rcode() == dns.rcode.SERVFAIL
        assert dead.asked("short")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "empty"])
def test_bad_snapshot_is_ignored_with_one_warning(upstream, tmp_path, damage):
    path = tmp_path / "cache.snap"
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_CACHE_FILE": str(path)}) as srv:
        fill(srv)
    good = path.read_bytes()
    bad = {"truncated": good[:len(good) // 2], "garbage": os.urandom(len(good)),
           "flipped": good[:100] + bytes([good[100] ^ 1]) + good[101:], "empty": b""}[damage]
    path.write_bytes(bad)
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_CACHE_FILE": str(path)}) as srv:
        warnings = [line for line in srv.log.splitlines() if "WARNING: cache snapshot" in line]
        assert len(warnings) == 1 and "ignored" in warnings[0], srv.log
        assert srv.query("www.example.test").answer[0][0].to_text() == "192.0.2.10"
        assert srv.stop() == 0
    snapshot.load(path.read_bytes(), 0, time.time())  # replaced by a good one at shutdown


def test_timer_snapshot_survives_sigkill(upstream, tmp_path):
    """No clean shutdown: the periodic snapshot (here every second) is what is restored."""
    path = tmp_path / "cache.snap"
    env = {"HEIMDALL_CACHE_FILE": str(path), "HEIMDALL_CACHE_SNAPSHOT_INTERVAL": "1"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        srv.query("www.example.test")
        srv.query("long.example.test")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = None  # not written yet
            if data is not None:
                # atomic rename: every file seen is whole, so one that does not load fails the test
                entries, _ = snapshot.load(data, 0, time.time())
                if len(entries) == 2:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("no timer snapshot with both entries within 10 s")
        os.killpg(srv.pid, signal.SIGKILL)
        srv.proc.wait()
    with DeadUpstream() as dead, HeimdallProcess([dead.addr], env=env) as srv:
        assert "restored 2 entries" in srv.log, srv.log
        assert srv.query("long.example.test").answer[0][0].to_text() == "192.0.2.12"
        assert dead.names == []


def test_each_worker_snapshots_its_own_cache(upstream, tmp_path):
    path = tmp_path / "cache.snap"
    env = {"HEIMDALL_CACHE_FILE": str(path), "HEIMDALL_WORKER_THREADS": "2"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        for i in range(40):  # different source ports: both workers get some
            srv.query(f"n{i}.bench.test")
        assert srv.stop() == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cache.snap.0", "cache.snap.1"], files
    counts = [len(snapshot.load((tmp_path / f).read_bytes(), 0, time.time())[0]) for f in files]
    assert sum(counts) >= 40 and all(c > 0 for c in counts), counts
    with DeadUpstream() as dead, HeimdallProcess([dead.addr], env=env, args=["--upstream-timeout", "0.3"]) as srv:
        restored = sorted(int(n) for n in re.findall(r"restored (\d+) entries", srv.log))
        assert restored == sorted(counts), srv.log
        # a name is cached only in the worker that fetched it, and the kernel picks the worker by source
        # port: about half are answered from the cache (fewer than 5 of 40 has odds ~1e-7)
        answered = sum(srv.query(f"n{i}.bench.test").rcode() == dns.rcode.NOERROR for i in range(40))
        assert answered >= 5


NAMES = [("www.example.test", "A", 300), ("multi.example.test", "A", 300), ("nope.example.test", "A", 60),
         ("alias.example.test", "A", 300), ("long.example.test", "A", 604800), ("medium.example.test", "TXT", 300)]


@pytest.fixture(scope="module")
def nsd_entries(upstream):
    """(client query, key, entry builder) for real NSD answers, built in-process."""
    from test_cache import client_query, fetch

    from heimdall import cachekey, wire
    from heimdall.cache import build_entry

    wires = [client_query(n, t, use_edns=0) for n, t, _ in NAMES]
    out = []
    for w, resp in zip(wires, fetch(upstream, wires)):
        q = wire.parse_query(w)
        out.append((w, cachekey.cache_key(w, q, False), lambda now, r=resp, w=w, q=q: build_entry(
            r, w, q, 1232, now, 0, 86400, 3600)[0]))
    return out


def make_cache(nsd_entries, now: int) -> Cache:
    cache = Cache(1000)
    for _w, key, build in nsd_entries:
        cache.put(key, build(now))
    return cache


def test_dump_load_round_trip_ages_by_wall_clock(nsd_entries):
    import dns.message

    cache = make_cache(nsd_entries, now=100)
    data = snapshot.dump(cache, now_mono=100, now_wall=1_000_000)
    # restored 250 s later on a machine whose monotonic clock restarted and reads 7
    entries, expired = snapshot.load(data, now_mono=7, now_wall=1_000_250)
    assert expired == 1  # the NXDOMAIN (negative TTL 60)
    restored = dict(entries)
    for (w, key, _), (name, _t, ttl) in zip(nsd_entries, NAMES):
        if ttl <= 250:
            assert key not in restored
            continue
        e = restored[key]
        ttl = min(ttl, 86400)  # HEIMDALL_MAX_TTL's default clamp
        assert e.expires == 7 + ttl - 250
        assert e.refresh(7)
        r = dns.message.from_wire(e.reply(w))
        orig = dns.message.from_wire(cache.map[key].reply(w))
        assert [x.to_text() for x in r.answer] != []
        assert {rr.ttl for rr in r.answer} == {ttl - 250}
        assert [sorted(x.to_text() for x in rrs) for rrs in r.answer] == \
               [sorted(x.to_text() for x in rrs) for rrs in orig.answer]
    # an hour later everything but long.example.test has expired
    entries, expired = snapshot.load(data, now_mono=7, now_wall=1_003_600)
    assert len(entries) == 1 and expired == 5


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                                   max_size=4), fix_crc=st.booleans())
def test_damaged_snapshots_raise_only_snapshot_error(nsd_entries, cut, flips, fix_crc):
    """Truncated or mutated (even with a recomputed checksum): SnapshotError, or entries that serve safely."""
    import zlib

    cache = make_cache(nsd_entries, now=100)
    data = bytearray(snapshot.dump(cache, now_mono=100, now_wall=1_000_000))
    if flips:
        for pos, x in flips:
            data[pos % len(data)] ^= x
    else:
        del data[cut % len(data):]
    if fix_crc and len(data) > len(snapshot.MAGIC) + 4:
        body = bytes(data[len(snapshot.MAGIC):-4])
        data[-4:] = zlib.crc32(body).to_bytes(4, "big")
    try:
        entries, _ = snapshot.load(bytes(data), now_mono=7, now_wall=1_000_010)
    except snapshot.SnapshotError:
        return
    w = nsd_entries[0][0]
    for _key, e in entries:  # whatever survived validation must be servable without exceptions
        e.refresh(8)
        e.reply(w)
        e.stale_reply(w)


def test_restore_respects_the_blocklist_in_force(upstream, tmp_path):
    """A name blocked since the snapshot is not restored; a block answer is never snapshotted, so a name
    unblocked since then gets its real answer, not the old block."""
    path, lists = tmp_path / "cache.snap", tmp_path / "block.txt"
    env = {"HEIMDALL_CACHE_FILE": str(path), "HEIMDALL_BLOCKLISTS": str(lists), "HEIMDALL_HTTP_BIND_ADDR": ""}
    lists.write_text("multi.example.test\n")
    with HeimdallProcess([upstream.addr], env=env) as srv:
        assert srv.query("multi.example.test").answer[0][0].to_text() == "0.0.0.0"  # blocked (zero_ip)
        assert srv.query("www.example.test").answer[0][0].to_text() == "192.0.2.10"
        assert srv.query("long.example.test").answer[0][0].to_text() == "192.0.2.12"
        assert srv.stop() == 0
    lists.write_text("www.example.test\n")
    with HeimdallProcess([upstream.addr], env=env) as srv:
        assert "restored 1 entries" in srv.log and "1 now blocked" in srv.log, srv.log
        assert srv.query("www.example.test").answer[0][0].to_text() == "0.0.0.0"
        assert sorted(rr.to_text() for rr in srv.query("multi.example.test").answer[0]) == [
            "192.0.2.31", "192.0.2.32", "192.0.2.33"]
