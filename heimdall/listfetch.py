"""One download of a list URL: a conditional GET that yields a whole body, "not modified", or why not.

Blocking and synchronous (urllib): callers run it in a thread, never on an
event loop. What counts as a good download is decided here, before anything
is written, so a bad one can never replace a good list:

* ``ok``: HTTP 200, a body of exactly the Content-Length (when one was sent),
  not empty, at most ``max_bytes``;
* ``not_modified``: HTTP 304 to our If-None-Match / If-Modified-Since;
* failures: ``error`` (DNS, refused, reset, TLS, timeout, a redirect we do not
  follow), ``http_error`` (any other status), ``truncated`` (fewer bytes than
  Content-Length, or a chunked body cut short), ``oversized`` (a
  Content-Length or a body over ``max_bytes``: reading stops at the cap),
  ``empty`` (no bytes).

TLS is verified (the system's CA store; ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
point OpenSSL elsewhere); redirects stay on http(s) and never go from https
to http. ``timeout`` bounds each network wait and the whole download.
Proxies come from the usual ``https_proxy`` / ``http_proxy`` / ``no_proxy``
variables (urllib's ProxyHandler).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from heimdall import __version__

USER_AGENT = f"heimdall/{__version__} (+blocklist refresh)"
CHUNK = 256 * 1024
FAILURES = ("error", "http_error", "truncated", "oversized", "empty")


def is_url(entry: str) -> bool:
    return entry[:8].lower().startswith(("http://", "https://"))


def redact(url: str) -> str:
    """The URL without user:password@ (for logs and metric labels)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Validators:
    """What makes the next request conditional (RFC 9110 13.1)."""

    etag: str = ""
    last_modified: str = ""

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


@dataclass
class Download:
    url: str
    result: str               # "ok", "not_modified", or one of FAILURES
    status: int = 0           # HTTP status; 0 when there was none
    body: bytes = b""
    validators: Validators = field(default_factory=Validators)
    detail: str = ""          # why it failed, in a few words
    seconds: float = 0.0
    received: int = 0         # bytes read (the body's size, or how far a failed read got)

    @property
    def failed(self) -> bool:
        return self.result in FAILURES


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects on http(s) only, and never from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        old = urllib.parse.urlsplit(req.full_url)
        if new.scheme not in ("http", "https") or (old.scheme == "https" and new.scheme != "https"):
            raise urllib.error.URLError(f"refused redirect to {redact(newurl)}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_Redirects(), urllib.request.HTTPSHandler(
        context=context or ssl.create_default_context()))


def _validators(headers, sent: Validators | None) -> Validators:
    """The response's validators; a 304 that repeats none keeps the ones we sent."""
    got = Validators(headers.get("ETag", "") or "", headers.get("Last-Modified", "") or "")
    return got if got or sent is None else sent


def fetch_url(url: str, validators: Validators | None = None, max_bytes: int = 64 << 20,
              timeout: float = 120.0, context: ssl.SSLContext | None = None) -> Download:
    """GET `url` (conditionally when `validators` are given); never raises for network or HTTP trouble."""
    started = time.monotonic()
    deadline = started + timeout
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if validators:
        if validators.etag:
            req.add_header("If-None-Match", validators.etag)
        if validators.last_modified:
            req.add_header("If-Modified-Since", validators.last_modified)

    def done(result: str, status: int = 0, detail: str = "", **kw) -> Download:
        return Download(url, result, status, detail=detail, seconds=time.monotonic() - started, **kw)

    received = 0
    status = 0
    try:
        with _opener(context).open(req, timeout=timeout) as resp:
            status = resp.status
            if status != 200:  # 2xx other than 200 (204, 206 ...) carries no whole list
                return done("http_error", status, f"HTTP {status} {resp.reason}")
            length_text = resp.headers.get("Content-Length")
            length = int(length_text) if length_text and length_text.strip().isdigit() else None
            if length is not None and length > max_bytes:
                return done("oversized", status, f"Content-Length {length} over the {max_bytes}-byte cap")
            chunks: list[bytes] = []
            while True:
                if time.monotonic() > deadline:
                    return done("error", status, f"timed out after {timeout:g}s", received=received)
                chunk = resp.read1(CHUNK)  # one network read at most: the deadline is checked between reads
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    return done("oversized", status, f"body over the {max_bytes}-byte cap", received=received)
                chunks.append(chunk)
            if length is not None and received != length:
                return done("truncated", status, f"{received} of {length} bytes", received=received)
            if received == 0:
                return done("empty", status, "no bytes")
            return done("ok", status, body=b"".join(chunks), validators=_validators(resp.headers, None),
                        received=received)
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return done("not_modified", 304, validators=_validators(exc.headers, validators))
        return done("http_error", exc.code, f"HTTP {exc.code} {exc.reason}")
    except http.client.IncompleteRead as exc:
        got = received + len(exc.partial or b"")
        return done("truncated", status, f"connection closed after {got} bytes", received=got)
    except (TimeoutError, socket.timeout):
        return done("error", status, f"timed out after {timeout:g}s", received=received)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return done("error", status, f"timed out after {timeout:g}s")
        text = getattr(reason, "strerror", None) or str(reason)
        if isinstance(reason, ssl.SSLCertVerificationError):
            text = f"TLS: {reason.verify_message or reason}"
        return done("error", status, text)
    except ConnectionResetError as exc:  # also RemoteDisconnected: no status line at all
        if status == 200:  # the body had begun
            return done("truncated", status, f"connection reset after {received} bytes", received=received)
        return done("error", status, str(exc) or "connection reset")
    except (http.client.HTTPException, ssl.SSLError, OSError, ValueError) as exc:
        # ValueError: a URL urllib cannot use (e.g. no host); HTTPException: a broken status line
        return done("error", status, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__,
                    received=received)
