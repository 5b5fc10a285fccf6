"""Heimdall forwarding over quic:// (DNS over QUIC) to a Heimdall DoQ listener, and DoQ's settings.

A second Heimdall ("front") forwards to the listener ("back", tests/test_doq.py)
over DoQ, verifying its certificate against the test's CA.
"""

from __future__ import annotations

import importlib.util
import os
import signal

import dns.rcode
import pytest
from test_doq import start_back
from test_encrypted_upstreams import answer_of, burst, heimdall, queries_across
from test_http_e2e import scrape, total

from heimdall.config import ConfigError, load_config
from heimdall.streamupstream import MAX_CONNECTIONS
from tools.testpki import SERVER_NAME


@pytest.fixture(scope="module")
def back(upstream, pki):
    b = start_back(upstream.addr, pki)
    yield b
    b.srv.stop()


def test_heimdall_forwards_over_quic_on_few_connections(back):
    m0 = scrape(back.http)
    with heimdall([back.url], back.ca) as front:
        assert answer_of(front) == (dns.rcode.NOERROR, ["192.0.2.10"])
        got = burst(front.port, [f"doq-{i}.bench.test" for i in range(200)])
    m1 = scrape(back.http)
    assert len(got) == 200 and set(got.values()) == {dns.rcode.NOERROR}
    assert total(m1, "heimdall_queries_total", protocol="doq") - total(m0, "heimdall_queries_total", protocol="doq") == 201
    connections = total(m1, "heimdall_tcp_connections_total") - total(m0, "heimdall_tcp_connections_total")
    assert 1 <= connections <= MAX_CONNECTIONS, f"{connections} connections for 201 misses"


def test_heimdall_forwards_over_quic_over_ipv6(upstream, pki):
    try:
        b = start_back(upstream.addr, pki, host="::1")
    except RuntimeError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        with heimdall([b.url], b.ca) as front:
            assert answer_of(front) == (dns.rcode.NOERROR, ["192.0.2.10"])
    finally:
        b.srv.stop()


@pytest.mark.parametrize("case", ["wrong name", "unknown CA"])
def test_bad_certificate_is_refused_with_servfail_and_a_log_line(back, case):
    name, ca = ("wrong.example", back.ca) if case == "wrong name" else (SERVER_NAME, back.other_ca)
    with heimdall([f"quic://127.0.0.1:{back.port}#{name}"], ca) as front:
        rcodes = [front.query(f"bad-cert-{i}.bench.test", timeout=5).rcode() for i in range(4)]
        log = front.log
    assert rcodes == [dns.rcode.SERVFAIL] * 4
    lines = [line for line in log.splitlines() if "QUIC handshake failed" in line]
    assert lines, log
    assert ("wrong.example" if case == "wrong name" else "unable to get local issuer certificate") in lines[0]
    assert len(lines) < 5, "a line per connection attempt (with backoff), not per query"


def test_killed_doq_upstream_loses_no_query(upstream, pki):
    first = start_back(upstream.addr, pki)
    try:
        with heimdall([first.url, upstream.addr], first.ca, HEIMDALL_UPSTREAM_TIMEOUT="3") as front:
            used_first = 0.0

            def kill() -> None:
                nonlocal used_first
                used_first = total(scrape(first.http), "heimdall_queries_total", protocol="doq")
                os.killpg(first.srv.pid, signal.SIGKILL)

            rcodes = queries_across(front, "kill-doq", kill)
            after = answer_of(front, "www.example.test")
    finally:
        first.srv.stop()
    assert rcodes == [dns.rcode.NOERROR] * 240, {str(r) for r in rcodes}
    assert after == (dns.rcode.NOERROR, ["192.0.2.10"])
    assert used_first >= 1, "the queries before the kill went to the DoQ upstream"


def test_without_aioquic_doq_is_a_configuration_error_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aioquic" else real(name, *a))
    for args in (["--upstream-servers", f"quic://127.0.0.1#{SERVER_NAME}"],
                 ["--upstream-servers", "127.0.0.1", "--quic-bind-addr", "127.0.0.1:8853",
                  "--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"]):
        with pytest.raises(ConfigError, match=r"heimdall-dns\[quic\]"):
            load_config(args, {})
    assert load_config(["--upstream-servers", "tls://127.0.0.1#x"], {}).upstream_servers
