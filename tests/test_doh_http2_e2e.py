"""The DoH listener's HTTP/2 end to end: curl, Heimdall's own DoH upstream client (h2) against a
second Heimdall's listener, and raw frames that break the protocol over a real TLS connection.

One listener serves the module; a second Heimdall forwards to it over DoH.
"""

from __future__ import annotations

import base64
import socket
import ssl
import struct
import subprocess
import time

import hpack
import pytest

from heimdall.http2frame import (DATA, FRAME_SIZE_ERROR, GOAWAY, HEADERS, PREFACE, PROTOCOL_ERROR,
                                 RST_STREAM, SETTINGS, STREAM_CLOSED, frame)
from heimdall_server import HeimdallProcess
from test_encrypted_listeners import kdig, query_wire
from test_http2 import frames_of
from test_http_e2e import free_tcp_port
from tls_ca import SERVER_NAME, make_pki


class Doh:
    def __init__(self, srv: HeimdallProcess, port: int, ca):
        self.srv, self.port, self.ca = srv, port, ca

    @property
    def url(self) -> str:
        return f"https://{SERVER_NAME}:{self.port}/dns-query"


@pytest.fixture(scope="module")
def doh(upstream, tmp_path_factory):
    cert, _ = make_pki(tmp_path_factory.mktemp("pki"))
    port = free_tcp_port()
    env = {"HEIMDALL_HTTPS_BIND_ADDR": f"127.0.0.1:{port}", "HEIMDALL_TLS_CERT_FILE": str(cert.cert),
           "HEIMDALL_TLS_KEY_FILE": str(cert.key)}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        yield Doh(srv, port, cert.ca)


def curl_h2(doh: Doh, *args: str, url: str | None = None) -> tuple[int, bytes, str]:
    r = subprocess.run(["curl", "-s", "--http2", "--max-time", "5", "--cacert", str(doh.ca),
                        "--resolve", f"{SERVER_NAME}:{doh.port}:127.0.0.1", "-D", "-", "-o", "-",
                        "-w", "\n%{http_code} %{http_version}", *args, url or doh.url], capture_output=True, timeout=15)
    out, _, code = r.stdout.rpartition(b"\n")
    head, _, body = out.partition(b"\r\n\r\n")
    status, version = code.split()
    assert version == b"2", code
    return int(status), body, head.decode(errors="replace").lower()


def test_curl_over_http2_post_and_get(doh, tmp_path):
    import dns.message
    body = tmp_path / "q.bin"
    body.write_bytes(query_wire())
    status, reply, head = curl_h2(doh, "-H", "content-type: application/dns-message", "--data-binary", f"@{body}")
    msg = dns.message.from_wire(reply)
    assert status == 200 and msg.answer[0][0].address == "192.0.2.10", head
    assert "content-type: application/dns-message" in head and f"cache-control: max-age={msg.answer[0].ttl}" in head
    assert f"content-length: {len(reply)}" in head
    encoded = base64.urlsafe_b64encode(query_wire("h2get.bench.test")).rstrip(b"=").decode()
    status, reply, _ = curl_h2(doh, url=f"{doh.url}?dns={encoded}")
    assert status == 200 and dns.message.from_wire(reply).answer[0][0].address == "192.0.2.1"


def test_heimdalls_doh_upstream_client_is_answered_by_heimdalls_listener(doh):
    env = {"HEIMDALL_UPSTREAM_CA_FILE": str(doh.ca)}
    with HeimdallProcess([f"https://127.0.0.1:{doh.port}/dns-query#{SERVER_NAME}"], env=env) as front:
        for name, address in [("www.example.test", "192.0.2.10"), ("via-doh.bench.test", "192.0.2.1")] * 2:
            assert front.query(name, timeout=5).answer[0][0].address == address
        assert front.query("nxdomain.example.test", timeout=5).rcode() == 3  # NXDOMAIN passes through
        assert "Traceback" not in front.log


def h2_socket(doh: Doh) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(doh.ca))
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", doh.port), timeout=5), server_hostname=SERVER_NAME)
    assert s.selected_alpn_protocol() == "h2"
    return s


def frames_until_close(s: ssl.SSLSocket, wait: float = 3.0) -> list[tuple[int, int, int, bytes]]:
    """The frames the server sends until it closes the connection (or `wait` seconds pass)."""
    data, deadline = b"", time.monotonic() + wait
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            continue
        except (ssl.SSLError, ConnectionError):
            break
        if not chunk:
            break
        data += chunk
    return frames_of(data)


def get(sid: int, encoder: hpack.Encoder, name: str = "www.example.test") -> bytes:
    path = "/dns-query?dns=" + base64.urlsafe_b64encode(query_wire(name)).rstrip(b"=").decode()
    block = encoder.encode([(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", path)])
    return frame(HEADERS, 0x5, sid, block)


def code_of(frames: list[tuple[int, int, int, bytes]], kind: int) -> int | None:
    """The error code of the first GOAWAY or RST_STREAM frame sent."""
    for k, _, _, payload in frames:
        if k == kind:
            return struct.unpack(">I", payload[-4:])[0]
    return None


START = PREFACE + frame(SETTINGS, 0, 0)
VIOLATIONS = {  # what the client sends -> (frame type and error code the server must answer with)
    "bad preface": (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" + b"\0" * 40, GOAWAY, PROTOCOL_ERROR),
    "frame too large": (START + b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"\0" * 100, GOAWAY, FRAME_SIZE_ERROR),
    "HEADERS on an even stream": (START + frame(HEADERS, 0x5, 2, b"\x82\x87\x84"), GOAWAY, PROTOCOL_ERROR),
    "garbage": (START + bytes(range(256)) * 4, GOAWAY, None),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_a_protocol_violation_gets_goaway_and_a_close(doh, case):
    sent, kind, code = VIOLATIONS[case]
    with h2_socket(doh) as s:
        s.sendall(sent)
        frames = frames_until_close(s)
    assert frames and frames[0][0] == SETTINGS, frames  # ours, first thing
    assert frames[-1][0] == kind and (code is None or code_of(frames, kind) == code), (case, frames)


def test_data_on_a_finished_stream_gets_rst_stream_and_the_connection_goes_on(doh):
    encoder = hpack.Encoder()
    with h2_socket(doh) as s:
        s.sendall(START + get(1, encoder) + frame(DATA, 0, 1, b"late"))
        time.sleep(0.3)
        s.sendall(get(3, encoder))
        frames = frames_until_close(s, wait=1.0)
    assert code_of(frames, RST_STREAM) == STREAM_CLOSED, frames
    ended = {sid for kind, flags, sid, _ in frames if kind in (DATA, HEADERS) and flags & 0x1}
    assert ended == {1, 3} and GOAWAY not in {f[0] for f in frames}, frames


def test_after_every_violation_the_listener_still_answers_and_logged_no_traceback(doh):
    """Last: the module's other tests have thrown their bad bytes by now."""
    assert kdig(doh.port, doh.ca, "+https").stdout.split() == ["192.0.2.10"]
    assert "Traceback" not in doh.srv.log and "internal error" not in doh.srv.log, doh.srv.log
