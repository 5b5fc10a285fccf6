"""The C hot path (heimdall/_hotpath.c) against the Python model of a cache hit, on real sockets.

The model is what the Python twin (heimdall/hotpath.py) does per datagram: key = data[2:].lower();
a fresh entry (re-aged through Entry.refresh) answers entry.reply(data) to the
sender, anything else goes to the slow path unchanged. Every test drives the
real reader that `UdpListener.reader()` installs, with queries sent from a
real client socket and replies read back from it.
"""

from __future__ import annotations

import socket
import time

import dns.message
import hotpath_rig
import pytest
from hotpath_rig import NAMES, make_query
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from heimdall import udp
from heimdall.config import load_config
from heimdall.hotpath import PyHotPath

pytestmark = pytest.mark.skipif(not udp.hot_path_built(), reason="C hot path not built (no compiler)")


class Rig(hotpath_rig.Rig):
    """The shared rig with its model held to one second.

    Replies carry TTLs aged to the second they were made in, and the model cannot
    tell which of two seconds a reply saw; so an exchange begins early in a second
    (a loaded machine would need to stall it for 0.3 s to straddle one), and a
    property example that straddles one all the same is discarded.
    """

    def begin(self) -> None:
        into_second = time.monotonic() % 1
        if into_second > 0.7:
            time.sleep(1 - into_second)
        self.second = int(time.monotonic())

    def exchange(self, datagrams: list[bytes]) -> list[bytes]:
        self.begin()
        return super().exchange(datagrams)

    def expected(self, data: bytes) -> bytes | None:
        if self.ticked():
            reject()
        return self.model(data)


@pytest.fixture()
def rig():
    r = Rig()
    yield r
    r.close()


def test_the_server_installs_the_c_reader_by_default_and_python_when_asked():
    c, py = Rig("c"), Rig("python")
    try:
        assert type(c.read).__name__ == "HotPath"
        assert isinstance(py.read, PyHotPath)
    finally:
        c.close()
        py.close()


def test_the_query_log_keeps_the_python_reader():
    r = Rig("c")
    try:
        r.srv.pipeline.fast_path = False  # what assembly.py sets when the query log is on
        assert type(r.srv.udp_listener.reader()).__name__ != "HotPath"
    finally:
        r.close()


def test_rate_limited_datagrams_go_to_limited_and_the_rest_are_served():
    seen: list[bytes] = []
    verdicts = iter([True, False, True, False, False, True])
    limited: list[tuple[bytes, tuple]] = []

    def admit(ip: bytes) -> bool:
        seen.append(ip)
        return next(verdicts)

    r = Rig("c")
    try:
        r.srv.pipeline.admit = admit
        r.srv.udp_listener.limited = lambda data, addr: limited.append((data, addr))
        r.read = r.srv.udp_listener.reader()
        assert type(r.read).__name__ == "HotPath"
        queries = [make_query(NAMES[i]) for i in range(5)] + [make_query("miss.hot.test")]
        replies = r.exchange(queries)
        assert seen == [socket.inet_aton("127.0.0.1")] * 6
        assert replies == [r.expected(queries[0]), r.expected(queries[2])]
        assert [d for d, _ in limited] == [queries[1], queries[3], queries[4]]
        assert limited[0][1] == r.client.getsockname()
        assert [d for d, _ in r.slow] == [queries[5]]
    finally:
        r.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the hook's error is logged
def test_a_failing_admit_hook_admits():
    r = Rig("c")
    try:
        r.srv.pipeline.admit = lambda ip: 1 / 0
        r.read = r.srv.udp_listener.reader()
        q = make_query(NAMES[0])
        assert r.exchange([q]) == [r.expected(q)]
    finally:
        r.close()


def test_a_hit_is_byte_identical_to_the_python_reply_with_the_clients_id_and_case(rig):
    q = make_query("N3.HoT.tESt", "A", qid=0xBEEF)
    replies = rig.exchange([q])
    assert replies == [rig.expected(q)]
    msg = dns.message.from_wire(replies[0])
    assert msg.id == 0xBEEF and str(msg.question[0].name) == "N3.HoT.tESt."
    assert msg.answer[0][0].address == "192.0.2.1"
    assert rig.slow == []


def test_edns_variant_and_counters(rig):
    queries = [make_query(n, "AAAA", edns=True) for n in NAMES]
    replies = rig.exchange(queries)
    assert replies == [rig.expected(q) for q in queries]
    assert dns.message.from_wire(replies[0]).edns == 0
    st_ = rig.srv.stats
    assert (st_.hits_fast, st_.udp_datagrams, st_.udp_wakeups) == (8, 8, 1)
    lid = rig.srv.cache.map[queries[0][2:].lower()].lid
    assert st_.hit_labels[lid] == 8


def test_misses_and_garbage_go_to_the_slow_path_unchanged(rig):
    miss = make_query("other.hot.test")
    short = b"\x12\x34\x01"
    empty = b""
    response_bit = bytearray(make_query(NAMES[0]))
    response_bit[2] |= 0x80  # QR set: not the cached key, slow path decides (drop)
    replies = rig.exchange([miss, short, empty, bytes(response_bit)])
    assert replies == []
    assert [d for d, _ in rig.slow] == [miss, short, empty, bytes(response_bit)]
    host, port = rig.slow[0][1]
    assert (host, port) == rig.client.getsockname()
    assert rig.srv.stats.hits_fast == 0 and rig.srv.stats.udp_datagrams == 4


def test_ttls_are_re_aged_through_entry_refresh(rig):
    q = make_query("aged.hot.test")
    rig.put(q, ttl=300, now=rig.now - 40)
    reply = dns.message.from_wire(rig.exchange([q])[0])
    assert 258 <= reply.answer[0].ttl <= 260


def test_an_expired_entry_goes_to_the_slow_path(rig):
    q = make_query("expired.hot.test")
    rig.put(q, ttl=5, now=rig.now - 60)
    assert rig.exchange([q]) == []
    assert [d for d, _ in rig.slow] == [q]


def test_more_than_one_batch_is_answered_in_one_wakeup(rig):
    queries = [make_query(NAMES[i % 8]) for i in range(200)]
    rig.begin()
    for q in queries:
        rig.client.sendto(q, rig.dest)
    rig.read()  # one callback: up to 4 full batches
    replies = [rig.client.recv(4096) for _ in queries]
    assert replies == [rig.expected(q) for q in queries]
    assert rig.srv.stats.udp_wakeups == 4  # batches: 64 + 64 + 64 + 8


def test_batch_size_adapts_down_at_low_rates_and_back_up_for_a_burst(rig):
    for _ in range(20):  # one datagram per callback: the ask shrinks to 1
        assert len(rig.exchange([make_query(NAMES[0])])) == 1
    before = rig.srv.stats.udp_wakeups
    burst = [make_query(NAMES[i % 8]) for i in range(300)]
    replies = rig.exchange(burst)
    assert replies == [rig.expected(q) for q in burst]
    batches = rig.srv.stats.udp_wakeups - before
    assert batches < 30, batches  # callbacks straight after each other double the ask (1, 2, 4, ... 64)


def test_a_partial_read_leaves_headroom_for_a_deeper_queue(rig):
    """After reading n < asked, the next ask is 2n: a queue a little deeper than last
    time is read in one call, not left for another trip through the loop."""
    first = [make_query(NAMES[i % 8]) for i in range(5)]
    assert rig.exchange(first) == [rig.expected(q) for q in first]
    assert rig.srv.stats.udp_wakeups == 1  # 5 of 64 asked: the next ask is 10
    deeper = [make_query(NAMES[i % 8]) for i in range(20)]
    assert rig.exchange(deeper) == [rig.expected(q) for q in deeper]
    # 10 (a full read: ask 20), then the other 10; an ask of exactly 5 took 5 + 10 + 5
    assert rig.srv.stats.udp_wakeups == 3


def test_time_hits_gets_each_batch():
    calls = []
    r = Rig(time_hits=lambda n, each: calls.append((n, each)))
    try:
        r.exchange([make_query(NAMES[0]), make_query("miss.hot.test"), make_query(NAMES[1])])
        assert len(calls) == 1 and calls[0][0] == 2 and 0 <= calls[0][1] < 1
    finally:
        r.close()


def test_a_failing_slow_path_does_not_stop_the_reader(rig, capsys):
    def boom(data, addr, now):
        raise RuntimeError("boom")

    rig.srv.udp_listener.slow = boom
    q = make_query(NAMES[2])
    replies = rig.exchange([make_query("miss.hot.test"), q])
    assert replies == [rig.expected(q)]
    assert rig.srv.stats.internal_errors == 1  # counted by UdpListener.slow_guarded, never raised into the loop


def test_ipv6_clients_get_their_reply_and_a_full_address_on_the_slow_path():
    try:
        r = Rig(family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        q = make_query(NAMES[4])
        miss = make_query("v6miss.hot.test")
        assert r.exchange([q, miss]) == [r.expected(q)]
        addr = r.slow[0][1]
        assert len(addr) == 4 and addr[:2] == r.client.getsockname()[:2]
    finally:
        r.close()


# A datagram: a cached query (random ID, random case) maybe with a byte changed, or noise.
cached_query = st.builds(
    lambda name, qtype, qid, flips: bytes(
        c ^ 0x20 if (i >= 12 and chr(c).isalpha() and (flips >> (i % 30)) & 1) else c
        for i, c in enumerate(make_query(name, qtype, qtype == "AAAA", qid))),
    st.sampled_from(NAMES), st.sampled_from(["A", "AAAA"]), st.integers(0, 65535), st.integers(0, 2**30))
mutated = st.builds(lambda d, i, b: d[:i % max(len(d), 1)] + bytes([b]) + d[i % max(len(d), 1) + 1:],
                    cached_query, st.integers(0, 200), st.integers(0, 255))
noise = st.binary(min_size=0, max_size=600)
datagram = st.one_of(cached_query, mutated, noise)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(datagram, min_size=1, max_size=100))
def test_property_c_reader_agrees_with_the_python_model(rig, datagrams):
    rig.slow.clear()
    replies = rig.exchange(datagrams)
    expected = [rig.expected(d) for d in datagrams]
    assert replies == [e for e in expected if e is not None]
    assert [d for d, _ in rig.slow] == [d for d, e in zip(datagrams, expected) if e is None]


def test_hot_path_c_without_the_extension_is_a_startup_error(monkeypatch):
    from heimdall import supervisor

    monkeypatch.setattr(udp, "_hotpath", None)
    config = load_config(["--hot-path", "c", "--upstream-servers", "127.0.0.1:9"], {})
    with pytest.raises(supervisor.StartupError, match="HEIMDALL_HOT_PATH=c"):
        supervisor.serve(config)
