"""DNS over TLS and DNS over HTTPS end to end: a real `heimdall serve`, real kdig, curl and dnsperf.

One server (NSD upstream, a certificate from the test's own CA) serves both
listeners for the whole module; the certificate-reload test replaces its
certificate and so runs after the others that use it. The rate-limit test has a
server of its own (its bucket would starve the others).
"""

from __future__ import annotations

import base64
import json
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from heimdall_server import ROOT, HeimdallProcess
from test_http_e2e import free_tcp_port, scrape, total
from tls_ca import SERVER_NAME, make_ca, make_pki, make_server_cert

IDLE = 3.0  # HEIMDALL_TCP_IDLE_TIMEOUT of the module's server
MAX_CONNECTIONS = 8


class Listeners:
    def __init__(self, srv: HeimdallProcess, dot: int, doh: int, http: int, ca: Path, other_ca: Path,
                 pki: Path, qlog: Path):
        self.srv, self.dot, self.doh, self.http = srv, dot, doh, http
        self.ca, self.other_ca, self.pki, self.qlog = ca, other_ca, pki, qlog

    @property
    def url(self) -> str:
        return f"https://{SERVER_NAME}:{self.doh}/dns-query"


@pytest.fixture(scope="module")
def tls(upstream, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    cert, other_ca = make_pki(folder)
    block = folder / "block.txt"
    block.write_text("ads.bench.test\n")
    dot, doh, http = free_tcp_port(), free_tcp_port(), free_tcp_port()
    qlog = folder / "queries.jsonl"
    env = {"HEIMDALL_TLS_BIND_ADDR": f"127.0.0.1:{dot}", "HEIMDALL_HTTPS_BIND_ADDR": f"127.0.0.1:{doh}",
           "HEIMDALL_TLS_CERT_FILE": str(cert.cert), "HEIMDALL_TLS_KEY_FILE": str(cert.key),
           "HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{http}", "HEIMDALL_BLOCKLISTS": str(block),
           "HEIMDALL_QUERY_LOG": str(qlog), "HEIMDALL_TCP_IDLE_TIMEOUT": str(IDLE),
           "HEIMDALL_TCP_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    srv = HeimdallProcess([upstream.addr], env=env).start()
    yield Listeners(srv, dot, doh, http, cert.ca, other_ca, folder, qlog)
    srv.stop()


def kdig(port: int, ca: Path, *args: str, name: str = "www.example.test", rdtype: str = "A"):
    return subprocess.run(["kdig", "@127.0.0.1", "-p", str(port), f"+tls-ca={ca}", f"+tls-hostname={SERVER_NAME}",
                           "+time=3", "+retry=0", *args, name, rdtype, "+short"],
                          capture_output=True, text=True, timeout=15)


def curl(tls: Listeners, *args: str, url: str | None = None, http: str = "--http1.1") -> tuple[int, bytes, str]:
    """(status, body, headers) of one request to the DoH listener (HTTP/1.1 unless told)."""
    r = subprocess.run(["curl", "-s", http, "--max-time", "5", "--cacert", str(tls.ca),
                        "--resolve", f"{SERVER_NAME}:{tls.doh}:127.0.0.1", "-D", "-", "-o", "-",
                        "-w", "\n%{http_code}", *args, url or tls.url], capture_output=True, timeout=15)
    out, _, code = r.stdout.rpartition(b"\n")
    head, _, body = out.partition(b"\r\n\r\n")
    return int(code), body, head.decode(errors="replace").lower()


def query_wire(name: str = "www.example.test", rdtype: str = "A") -> bytes:
    q = dns.message.make_query(name, rdtype)
    q.id = 0  # RFC 8484: GET requests with ID 0 are cache friendly
    return q.to_wire()


def test_kdig_over_tls_answers(tls):
    r = kdig(tls.dot, tls.ca, "+tls")
    assert r.returncode == 0 and r.stdout.split() == ["192.0.2.10"], r


def test_kdig_over_https_post_and_get_answer(tls):
    for mode in ("+https", "+https-get"):
        r = kdig(tls.doh, tls.ca, mode)
        assert r.returncode == 0 and r.stdout.split() == ["192.0.2.10"], (mode, r)


def test_a_client_trusting_another_ca_fails_the_handshake(tls):
    r = kdig(tls.dot, tls.other_ca, "+tls")
    assert r.returncode != 0 and "192.0.2.10" not in r.stdout
    assert "handshake" in r.stderr.lower() or "certificate" in r.stderr.lower(), r.stderr


def test_http1_post_and_get(tls, tmp_path):
    body = tmp_path / "query.bin"
    body.write_bytes(query_wire())
    status, reply, head = curl(tls, "-H", "content-type: application/dns-message", "--data-binary", f"@{body}")
    assert status == 200 and "content-type: application/dns-message" in head, head
    msg = dns.message.from_wire(reply)
    assert msg.answer[0][0].address == "192.0.2.10"
    ttl = msg.answer[0].ttl
    assert f"cache-control: max-age={ttl}" in head, head
    encoded = base64.urlsafe_b64encode(query_wire()).rstrip(b"=").decode()
    status, reply, _ = curl(tls, url=f"{tls.url}?dns={encoded}")
    assert status == 200 and dns.message.from_wire(reply).answer[0][0].address == "192.0.2.10"


def test_bad_requests_get_their_status_and_the_listener_goes_on(tls, tmp_path):
    body = tmp_path / "query.bin"
    body.write_bytes(query_wire())
    reply_bits = bytearray(query_wire())
    reply_bits[2] |= 0x80  # QR set: a response, not a query
    qr = base64.urlsafe_b64encode(bytes(reply_bits)).rstrip(b"=").decode()
    cases = [
        (400, [], f"{tls.url}?dns=%%%"),  # not base64url
        (400, [], tls.url),  # no dns parameter
        (400, [], f"{tls.url}?dns=AAAA"),  # too short to be a DNS message
        (400, [], f"{tls.url}?dns={qr}"),  # a DNS message, but not a query
        (404, [], f"https://{SERVER_NAME}:{tls.doh}/resolve?dns=AAAA"),
        (405, ["-X", "PUT", "--data-binary", f"@{body}"], tls.url),
        (415, ["-H", "content-type: text/plain", "--data-binary", f"@{body}"], tls.url),
        (400, ["-H", "content-type: application/dns-message", "--data-binary", "x"], tls.url),
    ]
    cases.append((405, ["-I"], f"{tls.url}?dns={qr}"))  # HEAD: a head, no body
    for want, args, url in cases:
        for http in ("--http1.1", "--http2"):
            status, _, _ = curl(tls, *args, url=url, http=http)
            assert status == want, (want, args, url, http)
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tls.doh}", "-alpn", "http/1.1", "-quiet",
                        "-ign_eof", "-CAfile", str(tls.ca)], input=b"NOT HTTP AT ALL\r\n\r\n",
                       capture_output=True, timeout=15)
    assert r.stdout.startswith(b"HTTP/1.1 400"), r.stdout[:200]
    assert kdig(tls.doh, tls.ca, "+https").stdout.split() == ["192.0.2.10"]  # the worker is still there
    assert tls.srv.proc.poll() is None


def test_pipelined_http1_requests_are_answered_in_order(tls):
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    names = ["pipe1.bench.test", "www.example.test", "pipe2.bench.test"]  # a miss, a hit, a miss
    requests = b"".join(b"GET /dns-query?dns=" + base64.urlsafe_b64encode(query_wire(n)).rstrip(b"=")
                        + b" HTTP/1.1\r\nhost: x\r\n\r\n" for n in names)
    requests += b"GET /other HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls.doh), timeout=5),
                         server_hostname=SERVER_NAME) as s:
        s.sendall(requests)
        data = b""
        while chunk := s.recv(65536):  # the server closes after the last one (connection: close)
            data += chunk
    parts = data.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"200", b"200", b"404"], data
    answers = [dns.message.from_wire(p.partition(b"\r\n\r\n")[2]) for p in parts[:3]]
    assert [str(a.question[0].name) for a in answers] == [n + "." for n in names]


def dnsperf(mode: str, port: int, names: Path) -> dict[str, str]:
    r = subprocess.run(["dnsperf", "-m", mode, "-s", "127.0.0.1", "-p", str(port), "-d", str(names), "-n", "2",
                        "-t", "5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    fields = {}
    for line in r.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        fields[key] = value.split()[0] if value.split() else ""
    return fields


@pytest.mark.parametrize("mode", ["dot", "doh"])
def test_dnsperf_gets_every_query_answered(tls, tmp_path, mode):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"www.example.test A\nq{i}.bench.test A\nbench.test SOA\n" for i in range(100)))
    port = tls.dot if mode == "dot" else tls.doh
    stats = dnsperf(mode, port, names)
    assert stats["Queries sent"] == "600" and stats["Queries completed"] == "600", stats
    assert stats["Queries lost"] == "0", stats


def test_metrics_and_query_log_name_the_transport(tls):
    before = scrape(tls.http)
    for _ in range(2):
        assert kdig(tls.dot, tls.ca, "+tls", name="m.bench.test").stdout.split() == ["192.0.2.1"]
        assert kdig(tls.doh, tls.ca, "+https", name="m.bench.test").stdout.split() == ["192.0.2.1"]
    after = scrape(tls.http)
    for protocol in ("dot", "doh"):
        moved = total(after, "heimdall_queries_total", protocol=protocol) \
            - total(before, "heimdall_queries_total", protocol=protocol)
        assert moved == 2, protocol
    deadline = time.monotonic() + 5
    seen: set[str] = set()
    while time.monotonic() < deadline and not {"dot", "doh"} <= seen:
        lines = tls.qlog.read_text().splitlines() if tls.qlog.exists() else []
        seen = {json.loads(line)["protocol"] for line in lines if '"m.bench.test' in line}
        time.sleep(0.1)
    assert {"dot", "doh"} <= seen, seen


def test_a_blocked_name_is_blocked_over_tls_and_https(tls):
    assert kdig(tls.dot, tls.ca, "+tls", name="ads.bench.test").stdout.split() == ["0.0.0.0"]
    assert kdig(tls.doh, tls.ca, "+https", name="ads.bench.test").stdout.split() == ["0.0.0.0"]
    assert tls.srv.query("ads.bench.test").answer[0][0].address == "0.0.0.0"


def tls_connect(tls: Listeners) -> ssl.SSLSocket:
    return dot_connect(tls.dot, tls.ca)


def dot_connect(port: int, ca: Path) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["dot"])
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=SERVER_NAME)


def closed_by_server(s: ssl.SSLSocket, wait: float = 0.0) -> bool:
    """The server closed `s` (TLS close, EOF or reset), seen within `wait` seconds."""
    if not s.pending() and not select.select([s], [], [], wait)[0]:
        return False
    s.settimeout(0.2)  # readable may only mean a TLS 1.3 session ticket
    try:
        return s.recv(1) == b""
    except (socket.timeout, ssl.SSLWantReadError):
        return False
    except (ssl.SSLError, ConnectionError):
        return True


def ask(s: ssl.SSLSocket, name: str) -> dns.message.Message:
    wire = dns.message.make_query(name, "A").to_wire()
    s.settimeout(5)
    s.sendall(len(wire).to_bytes(2, "big") + wire)
    size = int.from_bytes(s.recv(2), "big")
    data = b""
    while len(data) < size:
        data += s.recv(size - len(data))
    return dns.message.from_wire(data)


def test_an_idle_tls_connection_is_closed(tls):
    s = tls_connect(tls)
    try:
        assert ask(s, "www.example.test").answer
        t0 = time.monotonic()
        assert closed_by_server(s, wait=IDLE + 5)
        assert time.monotonic() - t0 >= IDLE * 0.5
    finally:
        s.close()


def test_at_the_connection_limit_the_oldest_idle_tls_connection_makes_way(tls):
    time.sleep(0.2)
    idle = [tls_connect(tls) for _ in range(MAX_CONNECTIONS)]
    try:
        newcomer = tls_connect(tls)
        idle.append(newcomer)
        assert ask(newcomer, "www.example.test").answer
        assert closed_by_server(idle[0], wait=2)
        assert not any(closed_by_server(s) for s in idle[1:])
    finally:
        for s in idle:
            s.close()


def test_the_rate_limit_holds_per_client_over_tls_and_https(upstream, tmp_path):
    cert, _ = make_pki(tmp_path)
    dot, doh = free_tcp_port(), free_tcp_port()
    env = {"HEIMDALL_TLS_BIND_ADDR": f"127.0.0.1:{dot}", "HEIMDALL_HTTPS_BIND_ADDR": f"127.0.0.1:{doh}",
           "HEIMDALL_TLS_CERT_FILE": str(cert.cert), "HEIMDALL_TLS_KEY_FILE": str(cert.key),
           "HEIMDALL_ENABLE_RATE_LIMITING": "true", "HEIMDALL_BURST_SIZE_PER_IP": "4",
           "HEIMDALL_QUERIES_PER_SECOND_PER_IP": "0.001"}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        with dot_connect(dot, cert.ca) as s:
            rcodes = [ask(s, "www.example.test").rcode() for _ in range(6)]
        assert rcodes == [dns.rcode.NOERROR] * 4 + [dns.rcode.REFUSED] * 2
        body = tmp_path / "query.bin"
        body.write_bytes(query_wire())
        status, reply, _ = curl(Listeners(srv, dot, doh, 0, cert.ca, cert.ca, tmp_path, tmp_path), "-H",
                                "content-type: application/dns-message", "--data-binary", f"@{body}")
        assert status == 200 and dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED  # the same client's bucket


def serve_and_fail(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HEIMDALL_HTTP_BIND_ADDR": "disabled",
            "HEIMDALL_BIND_ADDR": f"127.0.0.1:{free_tcp_port()}", "HEIMDALL_UPSTREAM_SERVERS": "127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "heimdall", "serve"], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=20)


def test_no_certificate_an_unreadable_one_or_a_taken_address_is_one_clear_line(tls, tmp_path):
    r = serve_and_fail({"HEIMDALL_TLS_BIND_ADDR": f"127.0.0.1:{free_tcp_port()}"})
    assert r.returncode == 2 and "HEIMDALL_TLS_CERT_FILE" in r.stderr and "Traceback" not in r.stderr, r.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    r = serve_and_fail({"HEIMDALL_HTTPS_BIND_ADDR": f"127.0.0.1:{free_tcp_port()}", "HEIMDALL_TLS_CERT_FILE": str(garbage),
                        "HEIMDALL_TLS_KEY_FILE": str(tmp_path / "missing.key")})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "cannot load the TLS certificate" in r.stderr and str(garbage) in r.stderr, r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve_and_fail({"HEIMDALL_TLS_BIND_ADDR": f"127.0.0.1:{port}",
                            "HEIMDALL_TLS_CERT_FILE": str(tls.pki / "server.pem"),
                            "HEIMDALL_TLS_KEY_FILE": str(tls.pki / "server.key")})
    assert r.returncode == 3 and f"cannot bind DoT 127.0.0.1:{port}: address already in use" in r.stderr, r.stderr


def test_sighup_reloads_the_certificate_and_a_broken_one_keeps_the_old(tls):
    """Last: it replaces the module server's certificate."""
    pem = tls.pki / "server.pem"
    good = pem.read_bytes()
    pem.write_text("broken\n")
    tls.srv.signal(signal.SIGHUP)
    wait_log(tls.srv, "keeping the certificate loaded before")
    assert kdig(tls.dot, tls.ca, "+tls").stdout.split() == ["192.0.2.10"]
    pem.write_bytes(good)
    new_ca = make_ca(tls.pki, "new-ca")
    new = make_server_cert(tls.pki, new_ca, stem="new-server")
    pem.write_bytes(new.cert.read_bytes())
    (tls.pki / "server.key").write_bytes(new.key.read_bytes())
    tls.srv.signal(signal.SIGHUP)
    wait_log(tls.srv, "TLS certificate reloaded")
    assert kdig(tls.dot, new.ca, "+tls").stdout.split() == ["192.0.2.10"]
    assert kdig(tls.doh, new.ca, "+https").stdout.split() == ["192.0.2.10"]
    assert kdig(tls.dot, tls.ca, "+tls").returncode != 0  # the old CA no longer matches


def wait_log(srv: HeimdallProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in srv.log:
        assert time.monotonic() < deadline, srv.log
        time.sleep(0.05)


def test_the_startup_line_names_each_listener(tls):
    line = next(line for line in tls.srv.log.splitlines() if "listening on" in line)
    assert f"dot 127.0.0.1:{tls.dot}" in line and f"doh 127.0.0.1:{tls.doh}" in line, line
    assert dns.rcode.NOERROR == tls.srv.query("www.example.test").rcode()
    assert "Traceback" not in tls.srv.log and "internal error" not in tls.srv.log, tls.srv.log
