"""Token buckets: bursts limited, continuous refill (controlled and real time), bounded memory."""

from __future__ import annotations

import ipaddress
import time
import tracemalloc

import pytest

from heimdall.ratelimit import RateLimitConfig, RateLimiter


def burst(rl: RateLimiter, ip: str, n: int, now: float) -> int:
    return sum(rl.allow(ip, now) for _ in range(n))


def test_burst_is_limited_then_refills_continuously():
    rl = RateLimiter(RateLimitConfig(per_ip_qps=10, per_ip_burst=5))
    assert burst(rl, "192.0.2.1", 20, now=100.0) == 5
    assert rl.limited_per_ip == 15
    assert not rl.allow("192.0.2.1", 100.05)           # half a token: still limited
    assert rl.allow("192.0.2.1", 100.1 + 1e-9)          # 0.1 s at 10/s = one token
    assert not rl.allow("192.0.2.1", 100.1 + 2e-9)
    assert burst(rl, "192.0.2.1", 20, now=100.4) == 3   # 0.3 s later: three more
    assert burst(rl, "192.0.2.1", 20, now=200.0) == 5   # refill caps at the burst


def test_other_clients_are_not_affected():
    rl = RateLimiter(RateLimitConfig(per_ip_qps=1, per_ip_burst=2))
    assert burst(rl, "192.0.2.1", 10, 0.0) == 2
    assert burst(rl, "192.0.2.2", 10, 0.0) == 2
    assert burst(rl, "2001:db8::1", 10, 0.0) == 2


def test_refill_in_real_time():
    rl = RateLimiter(RateLimitConfig(per_ip_qps=20, per_ip_burst=4), now=time.monotonic())
    assert burst(rl, "198.51.100.7", 10, time.monotonic()) == 4
    assert not rl.allow("198.51.100.7", time.monotonic())
    time.sleep(0.25)                                   # 5 tokens at 20/s, capped at 4
    assert burst(rl, "198.51.100.7", 10, time.monotonic()) == 4


def test_global_limit_applies_across_clients():
    rl = RateLimiter(RateLimitConfig(per_ip_qps=100, per_ip_burst=100, global_qps=10, global_burst=10))
    served = sum(rl.allow(f"10.0.{i // 256}.{i % 256}", 5.0) for i in range(50))
    assert served == 10 and rl.limited_global == 40
    assert sum(rl.allow(f"10.1.0.{i}", 5.5) for i in range(50)) == 5   # 0.5 s at 10/s


def test_ipv4_24_and_ipv6_56_aggregation():
    rl = RateLimiter(RateLimitConfig(per_ip_qps=1, per_ip_burst=3, aggregate=True))
    assert sum(rl.allow(f"203.0.113.{i}", 0.0) for i in range(1, 10)) == 3     # one /24
    assert rl.allow("203.0.114.1", 0.0)                                        # next /24
    net = ipaddress.ip_network("2001:db8:0:aa00::/56")
    hosts = [str(net[i * 2**64 + 1]) for i in range(5)]                         # different /64s, same /56
    assert sum(rl.allow(h, 0.0) for h in hosts) == 3
    assert rl.allow("2001:db8:0:ab00::1", 0.0)                                  # next /56
    assert rl.key("2001:db8:0:aa11::1") == rl.key("2001:db8:0:aaff:ffff::1")
    assert len(rl) == 4
    plain = RateLimiter(RateLimitConfig(per_ip_qps=1, per_ip_burst=3))
    assert sum(plain.allow(f"203.0.113.{i}", 0.0) for i in range(1, 10)) == 9


def test_ten_thousand_sources_stay_bounded():
    cfg = RateLimitConfig(per_ip_qps=5, per_ip_burst=10, max_buckets=2000)
    rl = RateLimiter(cfg)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    now = 0.0
    peak_len = 0
    for i in range(10_000):
        now += 0.0001
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" if i % 2 else f"fd00::{i:x}"
        assert rl.allow(ip, now)                # a new client always gets its burst
        peak_len = max(peak_len, len(rl))
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert peak_len <= cfg.max_buckets
    assert rl.evicted >= 10_000 - cfg.max_buckets
    assert grown < 1_000_000, grown             # ~2,000 small buckets, not 10,000


def test_idle_buckets_are_swept_periodically():
    rl = RateLimiter(RateLimitConfig(per_ip_qps=10, per_ip_burst=10, sweep_interval=30))
    for i in range(1000):
        rl.allow(f"10.0.{i // 256}.{i % 256}", 1.0)
    assert len(rl) == 1000
    for _ in range(20):
        rl.allow("192.0.2.99", 10.0)              # this one is drained and stays
    rl.allow("192.0.2.99", 31.0 - 1.5)           # not yet time to sweep
    assert len(rl) == 1001
    rl.allow("192.0.2.50", 31.0)                 # sweep: every refilled bucket goes
    assert len(rl) <= 2


def test_sweep_keeps_buckets_that_are_still_refilling():
    rl = RateLimiter(RateLimitConfig(per_ip_qps=1, per_ip_burst=10, max_buckets=10))
    burst(rl, "192.0.2.1", 10, 0.0)
    assert rl.sweep(5.0) == 0 and len(rl) == 1   # 5 of 10 tokens back: keep its state
    assert rl.sweep(10.0) == 1 and len(rl) == 0


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        RateLimiter(RateLimitConfig(per_ip_qps=0))


def test_packed_addresses_aggregate_like_text_ones():
    import socket
    rl = RateLimiter(RateLimitConfig(per_ip_qps=1, per_ip_burst=2, aggregate=True))
    v4 = [socket.inet_pton(socket.AF_INET, f"198.51.100.{i}") for i in (1, 2, 3)]
    assert [rl.allow(ip, 0.0) for ip in v4] == [True, True, False]
    v6 = [socket.inet_pton(socket.AF_INET6, a) for a in ("2001:db8:0:1200::1", "2001:db8:0:12ff::2", "2001:db8:0:1300::1")]
    assert [rl.allow(ip, 0.0) for ip in v6] == [True, True, True]    # third is another /56
    assert rl.allow(v6[0], 0.0) is False
    plain = RateLimiter(RateLimitConfig(per_ip_qps=1, per_ip_burst=1))
    assert [plain.allow(ip, 0.0) for ip in v4] == [True, True, True]
