"""The load generator over TCP, DoT and DoH against a real Unbound (and dnsperf -m dot), and over DoQ
against Heimdall's DoQ listener, with a test CA."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import requires_dnsperf
from tools.errors import EXIT_REGRESSION
from tools.loadgen import LoadConfig, run_load
from tools.peers import UnboundServer

CLI = [sys.executable, "-c", "from tools.cli import main; main()"]
CLIENTS = 8


def target(srv: UnboundServer, transport: str) -> str:
    port = {"tcp": srv.port, "dot": srv.tls_port, "doh": srv.https_port}[transport]
    return f"127.0.0.1:{port}"


def load(srv: UnboundServer, pki, transport: str, **kw) -> dict:
    server, _ = pki
    tls = {} if transport == "tcp" else {"ca_file": server.ca, "tls_server_name": server.name}
    cfg = LoadConfig(**{"server": target(srv, transport), "transport": transport, "duration": 1.0, "warmup": 0,
                        "clients": CLIENTS, "processes": 1, "timeout_ms": 2000, "warm_set": 200, **tls, **kw})
    return run_load(cfg)


@pytest.mark.parametrize("transport", ["tcp", "dot", "doh"])
def test_persistent_connections_answer_every_query(tls_unbound, pki, transport):
    r = load(tls_unbound, pki, transport)
    assert r["transport"] == transport
    assert r["received"] == r["sent"] > 0 and r["timeouts"] == 0 and r["mismatched"] == 0
    assert r["qps"] > 0 and r["successes"] == r["received"]
    assert sum(b["count"] for b in r["histogram"]["buckets"]) == r["received"]
    c = r["connections"]
    assert c["queries_per_connection"] == 0
    assert c["opened"] == CLIENTS  # one each, kept for the whole run
    assert c["handshake_failures"] == c["connect_failures"] == c["lost_with_connection"] == 0


@pytest.mark.parametrize("transport", ["tcp", "dot", "doh"])
def test_one_query_per_connection_opens_one_connection_per_query(tls_unbound, pki, transport):
    r = load(tls_unbound, pki, transport, queries_per_connection=1)
    assert r["received"] == r["sent"] > 0 and r["timeouts"] == 0
    c = r["connections"]
    # queries sent just after the window closed opened connections too: at most one per client
    assert r["sent"] <= c["opened"] <= r["sent"] + CLIENTS
    assert c["handshake_failures"] == 0


@pytest.mark.parametrize("transport", ["tcp", "doh"])
def test_open_loop_pipelines_queries_on_few_connections(tls_unbound, pki, transport):
    """On schedule, whatever the replies do: two connections carry every query (DoH as concurrent streams)."""
    r = load(tls_unbound, pki, transport, clients=2, qps=1000)
    assert r["mode"] == "open" and r["received"] == r["sent"] > 0 and r["timeouts"] == 0
    assert r["sent"] >= 900  # the schedule held (1,000 q/s for 1 s), with a margin for a busy machine
    assert r["connections"]["opened"] == 2


@pytest.mark.parametrize("transport", ["dot", "doh"])
def test_an_untrusted_ca_is_a_counted_failure_and_a_clear_exit(tls_unbound, pki, transport):
    _, other_ca = pki
    out = subprocess.run([*CLI, "load", "--server", target(tls_unbound, transport), "--transport", transport,
                          "--ca-file", str(other_ca), "--duration", "0.5", "--warmup", "0", "--clients", "2",
                          "--quiet"], capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_REGRESSION, out.stderr
    assert "Traceback" not in out.stderr
    assert f"over {transport}" in out.stderr and "TLS handshakes" in out.stderr
    assert "unable to get local issuer certificate" in out.stderr
    assert "handshake failures" in out.stdout


def test_a_wrong_server_name_fails_every_handshake(tls_unbound, pki):
    r = load(tls_unbound, pki, "dot", tls_server_name="other.heimdall.test")
    c = r["connections"]
    assert r["received"] == 0 and r["sent"] == r["timeouts"] > 0
    assert c["handshake_failures"] >= CLIENTS and c["lost_with_connection"] >= r["sent"]
    assert "Hostname mismatch" in c["first_error"]
    assert any("TLS handshakes" in w for w in r["warnings"])


def test_insecure_skips_the_certificate_check(tls_unbound, pki):
    cfg = LoadConfig(server=target(tls_unbound, "dot"), transport="dot", insecure=True, duration=0.5, warmup=0,
                     clients=2, processes=1, warm_set=200)
    r = run_load(cfg)
    assert r["received"] == r["sent"] > 0 and r["connections"]["handshake_failures"] == 0


@pytest.mark.parametrize("args, message", [
    (["--queries-per-connection", "1"], "needs a connection"),
    (["--transport", "tcp", "--ca-file", "/nonexistent"], "go with --transport dot, doh or doq"),
    (["--transport", "dot", "--ca-file", "/nonexistent"], "no such file"),
    (["--transport", "quic"], "quic"),
    (["--transport", "doq", "--engine", "dnsperf"], "dnsperf has no DNS over QUIC"),
])
def test_transport_flags_that_do_not_fit_are_one_line_errors(args, message):
    out = subprocess.run([*CLI, "load", "--server", "127.0.0.1:9", "--duration", "0.2", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def doq_server(upstream, pki):
    """Heimdall's DoQ listener: Unbound 1.17 serves no DNS over QUIC."""
    from test_doq import start_back

    b = start_back(upstream.addr, pki, idle=30, HEIMDALL_TCP_MAX_CONNECTIONS="64")
    yield b
    b.srv.stop()


def load_doq(srv, pki, **kw) -> dict:
    cfg = LoadConfig(**{"server": f"127.0.0.1:{srv.port}", "transport": "doq", "duration": 1.0, "warmup": 0,
                        "clients": CLIENTS, "processes": 1, "timeout_ms": 2000, "warm_set": 200,
                        "ca_file": pki[0].ca, "tls_server_name": pki[0].name, **kw})
    return run_load(cfg)


@pytest.mark.parametrize("per_connection", [0, 5])
def test_doq_answers_every_query_on_its_connections(doq_server, pki, per_connection):
    r = load_doq(doq_server, pki, queries_per_connection=per_connection)
    assert r["transport"] == "doq"
    assert r["received"] == r["sent"] > 0 and r["timeouts"] == 0 and r["mismatched"] == 0
    assert r["successes"] == r["received"]
    c = r["connections"]
    assert c["handshake_failures"] == c["connect_failures"] == c["lost_with_connection"] == 0
    if per_connection:  # a new connection after every 5 queries (those after the window too)
        assert r["sent"] / 5 <= c["opened"] <= r["sent"] / 5 + 2 * CLIENTS
    else:
        assert c["opened"] == CLIENTS


def test_doq_queries_that_time_out_give_their_streams_back(upstream, pki):
    """A server that never answers: every timed-out query stops its stream, so the server's 32 streams
    per connection do not run out and all 120 queries reach it over one connection."""
    from test_doq import start_back

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the back's upstream: takes, never answers
    silent.bind(("127.0.0.1", 0))
    silent.settimeout(0.2)
    b = start_back(f"127.0.0.1:{silent.getsockname()[1]}", pki, HEIMDALL_UPSTREAM_TIMEOUT="30")
    try:
        r = load_doq(b, pki, test_type="cache-miss", clients=1, qps=60, duration=2.0, timeout_ms=200)
        seen = 0
        while True:
            try:
                silent.recv(4096)
                seen += 1
            except socket.timeout:
                break
    finally:
        b.srv.stop()
        silent.close()
    assert r["connections"]["opened"] == 1 and r["received"] == 0 and r["timeouts"] == r["sent"] >= 100
    assert seen >= r["sent"] - 5, (seen, r["sent"])  # without giving streams back: 32


def test_doq_with_an_untrusted_ca_counts_failed_handshakes(doq_server, pki):
    r = load_doq(doq_server, pki, ca_file=pki[1], duration=0.5)
    c = r["connections"]
    assert r["received"] == 0 and c["handshake_failures"] >= 2
    assert "unable to get local issuer certificate" in c["first_error"]


@requires_dnsperf
def test_dnsperf_runs_over_dot(tls_unbound, pki):
    r = load(tls_unbound, pki, "dot", engine="dnsperf")
    assert " -m dot" in r["dnsperf"]["command"]
    assert r["transport"] == "dot" and r["engine"] == "dnsperf"
    assert r["received"] > 0 and r["timeouts"] <= 0.01 * r["sent"]


@requires_dnsperf
def test_compare_measures_every_server_over_each_transport(tmp_path):
    """Heimdall and Unbound over UDP and DoT with the run's throwaway CA, each over its own port."""
    from tools.sidebyside.options import CompareOptions
    from tools.sidebyside.run import run_compare

    opts = CompareOptions(peers=["unbound"], rounds=1, duration=0.5, warm_set=200, transports=("udp", "dot"),
                          results_dir=tmp_path)
    report = run_compare(opts, say=lambda m: None)
    rows = {c["name"]: c for c in report["contestants"]}
    expected = ["heimdall", "unbound", "heimdall/dot", "unbound/dot"]
    assert list(rows) == expected
    assert [rows[n]["transport"] for n in expected] == [n.partition("/")[2] or "udp" for n in expected]
    for c in rows.values():
        r = c["rounds"][0]
        assert r["qps_dnsperf"] > 0 and r["qps_builtin"] > 0 and r["p99_us_builtin"] > 0
        assert c["primed"]["answered"] == 200
    assert rows["unbound/dot"]["addr"] != rows["unbound"]["addr"]  # its own DoT port
    assert report["options"]["transports"] == ["udp", "dot"]
    dot_ratio = report["ratios_to_heimdall"]["unbound/dot"]["qps_builtin"]
    md = (tmp_path / next(p.name for p in tmp_path.iterdir()) / "compare.md").read_text()
    assert "## over dot" in md and "unbound/dot" in md
    assert dot_ratio is not None and dot_ratio["ratio_of_medians"] > 0
    assert rows["heimdall/dot"]["addr"] != rows["heimdall"]["addr"]
