"""What a DoH request asks (RFC 8484), and the HTTP reply to it, apart from HTTP/2 or HTTP/1.1.

A request is a DNS message or a refusal with its HTTP status: 404 for a path
other than /dns-query, 405 for a method other than GET and POST, 415 for a
POST body that is not application/dns-message, 400 for a missing or bad `dns`
parameter or a body that cannot be a DNS message. A reply carries the DNS
answer with `cache-control: max-age` set to its lowest TTL, so HTTP caches
keep it no longer than a DNS cache would.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Sequence

from heimdall import wire

PATH = b"/dns-query"
GET_DNS = PATH + b"?dns="
DNS_MESSAGE = b"application/dns-message"
MAX_MESSAGE = 65535
URL_TO_STANDARD = bytes.maketrans(b"-_+/", b"+/!!")
Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Refusal:
    """An HTTP error instead of a DNS answer."""

    status: int
    reason: str


TOO_LARGE = Refusal(413, "a DNS message is at most 65535 bytes")


def dns_message(method: bytes, target: bytes, content_type: bytes | None, body: bytes) -> bytes | Refusal:
    """The DNS query a request carries, or why there is none."""
    if method == b"GET" and target.startswith(GET_DNS) and b"&" not in target:  # what DoH clients send
        msg = decode_base64url(target[len(GET_DNS):])
        return msg if msg is not None and wire.HEADER_LEN <= len(msg) <= MAX_MESSAGE else refusal_of(msg)
    return any_message(method, target, content_type, body)


def any_message(method: bytes, target: bytes, content_type: bytes | None, body: bytes) -> bytes | Refusal:
    """dns_message for any request (that one reads the GET every DoH client sends in short)."""
    path, _, query = target.partition(b"?")
    if path != PATH:
        return Refusal(404, "not found: DNS queries go to /dns-query")
    if method == b"GET":
        if query.startswith(b"dns=") and b"&" not in query:
            values = [query[4:]]
        else:
            values = [v for k, _, v in (p.partition(b"=") for p in query.split(b"&")) if k == b"dns"]
        if len(values) != 1:
            return Refusal(400, "GET needs one dns parameter (the query, base64url)")
        msg = decode_base64url(values[0])
        if msg is None:
            return refusal_of(msg)
    elif method == b"POST":
        kind = (content_type or b"").split(b";")[0].strip().lower()
        if kind != DNS_MESSAGE:
            return Refusal(415, "POST needs content-type application/dns-message")
        msg = body
    else:
        return Refusal(405, "only GET and POST are served")
    return msg if wire.HEADER_LEN <= len(msg) <= MAX_MESSAGE else refusal_of(msg)


def refusal_of(msg: bytes | None) -> Refusal:
    """Why a decoded message (None: no message decoded) is not taken."""
    if msg is None:
        return Refusal(400, "the dns parameter is not base64url")
    return TOO_LARGE if len(msg) > MAX_MESSAGE else Refusal(400, "not a DNS message")


def decode_base64url(text: bytes) -> bytes | None:
    """RFC 4648 base64url without padding (padding tolerated); None when it is not.
    Its alphabet mapped onto base64's (and base64's own + and / onto a byte neither has), then
    decoded strictly: anything else in it, or padding anywhere but at the end, is refused."""
    text = text.rstrip(b"=")
    try:
        return binascii.a2b_base64(text.translate(URL_TO_STANDARD) + b"=" * (-len(text) % 4), strict_mode=True)
    except binascii.Error:
        return None


def max_age(reply: bytes) -> int:
    """The lowest TTL of the reply's records (0 when it has none or cannot be read)."""
    try:
        scan = wire.scan_response(reply)
    except (wire.WireError, IndexError, ValueError):
        return 0
    return min((wire.read_ttl(reply, off) for off in scan.ttl_offsets), default=0)


class AnswerHeaders:
    """The headers of each reply, kept by its bytes after the ID: within a second, every reply
    from one cache entry is the same but for the client's ID, so its TTLs are read once.
    The kept headers are a tuple, handed out as they are (and a reply head's key as they are)."""

    KEEP = 1024

    def __init__(self) -> None:
        self.kept: dict[bytes, Headers] = {}

    def __call__(self, reply: bytes) -> Headers:
        key = reply[2:]
        headers = self.kept.get(key)
        if headers is None:
            if len(self.kept) >= self.KEEP:
                self.kept.clear()
            headers = self.kept[key] = ((b"content-type", DNS_MESSAGE), (b"content-length", str(len(reply)).encode()),
                                        (b"cache-control", f"max-age={max_age(reply)}".encode()))
        return headers


answer_headers = AnswerHeaders()


def refusal_headers(refusal: Refusal) -> tuple[Headers, bytes]:
    body = refusal.reason.encode() + b"\n"
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if refusal.status == 405:
        headers.append((b"allow", b"GET, POST"))
    return headers, body
