"""A real HTTP server on loopback (the standard library's http.server in a thread) that serves lists.

    with ListServer() as web:
        web.set("/block.txt", b"ads.example\\n")
        url = web.url("/block.txt")
        web.modes["/block.txt"] = "500"          # or truncated, oversized, oversized-stream, empty, html, hang
        web.seen("/block.txt")                   # the requests it answered, with their validators

In mode "ok" it answers with ETag and Last-Modified and honours If-None-Match
(first) and If-Modified-Since with 304, as RFC 9110 says. The failure modes
serve `poison` (names no test expects blocked) so that a wrongly accepted
download shows. `validators=False` in set() serves the list without them.
"""

from __future__ import annotations

import hashlib
import http.server
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

POISON = b"".join(b"poison%d.bench.test\n" % i for i in range(50))


@dataclass(frozen=True)
class Seen:
    path: str
    status: int
    if_none_match: str | None
    if_modified_since: str | None
    at: float


@dataclass
class Served:
    body: bytes
    etag: str
    last_modified: str
    validators: bool = True


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(self.server.owner, self.path.split("?")[0])

    def _record(self, status: int) -> None:
        """Before the answer goes out, so that a client that has it finds its request here."""
        web = self.server.owner
        with web.lock:
            web.requests.append(Seen(self.path.split("?")[0], status, self.headers.get("If-None-Match"),
                                     self.headers.get("If-Modified-Since"), time.monotonic()))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None) -> None:
        self._record(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _answer(self, web: "ListServer", path: str) -> int:
        if path.startswith("/redirect"):
            self._send(302, headers={"Location": web.redirects.get(path, "/")}, length=0)
            return 302
        served = web.lists.get(path)
        if served is None:
            self._send(404, b"not found\n", length=10)
            return 404
        mode = web.modes.get(path, "ok")
        if mode == "500":
            self._send(500, b"oops\n", length=5)
            return 500
        if mode == "empty":
            self._send(200, headers={"Content-Type": "text/plain"}, length=0)
            return 200
        if mode == "html":
            page = b"<!doctype html>\n<html><body><h1>Service Unavailable</h1></body></html>\n"
            self._send(200, page, headers={"Content-Type": "text/html"}, length=len(page))
            return 200
        if mode == "truncated":  # promise more than is sent, then close
            self._send(200, POISON[: len(POISON) // 2], length=len(POISON))
            return 200
        if mode in ("oversized", "oversized-stream"):
            body = POISON * (web.oversize // len(POISON) + 1)
            self._send(200, body, length=len(body) if mode == "oversized" else None)
            return 200
        if mode == "hang":
            self._record(0)
            web.stopping.wait(30)
            return 0
        if served.validators:
            inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
            if inm is not None:
                fresh = served.etag in (t.strip() for t in inm.split(","))
            elif ims is not None:
                try:
                    fresh = parsedate_to_datetime(ims) >= parsedate_to_datetime(served.last_modified)
                except (TypeError, ValueError):
                    fresh = False
            else:
                fresh = False
            if fresh:
                self._send(304, headers={"ETag": served.etag, "Last-Modified": served.last_modified})
                return 304
        headers = {"Content-Type": "text/plain"}
        if served.validators:
            headers.update({"ETag": served.etag, "Last-Modified": served.last_modified})
        self._send(200, served.body, headers=headers, length=len(served.body))
        return 200


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "ListServer"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that stops reading (oversized) or fails TLS: expected here, not worth a traceback


class ListServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.lists: dict[str, Served] = {}
        self.modes: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[Seen] = []
        self.oversize = 200_000  # bytes served in the oversized modes
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._versions = 0
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.tls = tls is not None
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def set(self, path: str, body: bytes, validators: bool = True) -> Served:
        """Serve `body` at `path` from now on, with a new ETag and a later Last-Modified."""
        self._versions += 1
        served = Served(body, f'"{hashlib.sha256(body).hexdigest()[:16]}-{self._versions}"',
                        formatdate(1_700_000_000 + 10 * self._versions, usegmt=True), validators)
        self.lists[path] = served
        return served

    def seen(self, path: str) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> "ListServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> "ListServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
