"""The DoH listener's connections: HTTP/2 or HTTP/1.1 on one TLS port, into the pipeline.

HTTP/2 is heimdall/http2.py's own framing (the DoH hot path); HTTP/1.1 is h11,
a sans-IO state machine. This protocol feeds them the bytes TLS decrypted and
writes what they produce, so no web framework sits between a request and the
pipeline. ALPN picks the protocol: "h2" gets HTTP/2, anything else (http/1.1
or no ALPN) HTTP/1.1. A request's DNS message (dohrequest.py) goes through
the rate limit and the pipeline as a TCP query does (TcpConnection: stream
semantics, no truncation; the connection limits and the idle timeout of
HEIMDALL_TCP_*), and its reply goes back on its stream. Every request gets
an HTTP reply: an answer, or the status saying why not.

Bounds: at most 100 HTTP/2 streams open per connection (more are refused with
REFUSED_STREAM), request bodies past 65535 bytes are not kept (413), and
reading pauses while 32 queries wait for upstreams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from http import HTTPStatus
from typing import Callable

import h11

from heimdall.dohrequest import MAX_MESSAGE, Headers, Refusal, answer_headers, dns_message, refusal_headers
from heimdall.headerblock import MAX_HEADERS
from heimdall.http2 import Http2Connection
from heimdall.tcp import TcpListener, TlsConnection

log = logging.getLogger("heimdall.doh")

Respond = Callable[[int, Headers, bytes], None]  # (status, headers, body) on one request's stream


class Exchange:
    """One request's reply: sent once, whichever comes first (the answer or a refusal)."""

    __slots__ = ("respond", "done")

    def __init__(self, respond: Respond):
        self.respond = respond
        self.done = False

    def send(self, reply: bytes, client: object = None) -> None:
        if not self.done:
            self.done = True
            self.respond(200, answer_headers(reply), reply)

    def refuse(self, refusal: Refusal) -> None:
        if not self.done:
            self.done = True
            headers, body = refusal_headers(refusal)
            self.respond(refusal.status, headers, body)

    def unanswered(self, status: int) -> None:
        self.refuse(Refusal(status, "rate limited" if status == 429 else "internal error"))


class DohConnection(TlsConnection):
    """A DoH connection: HTTP/2 or HTTP/1.1 by ALPN, each request into the pipeline."""

    def __init__(self, listener: TcpListener) -> None:
        super().__init__(listener)
        self.http: Http2 | Http1 | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.transport.is_closing():  # no room for it
            return
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        self.http = Http2(self) if alpn == "h2" else Http1(self)

    def data_received(self, data: bytes) -> None:
        if self.http is not None:
            try:
                self.http.receive(data)
            except Exception as exc:  # noqa: BLE001 - one client's bytes must never reach the loop as an error
                self.pipeline.counters.internal_errors += 1
                log.error(f"internal error on a DoH connection: {exc!r}")
                self.transport.close()
        if self.outstanding >= self.MAX_PIPELINE:
            self.transport.pause_reading()

    def request(self, method: bytes, target: bytes, content_type: bytes | None, body: bytes,
                respond: Respond) -> None:
        """A whole request: answered now, refused, or answered when its miss completes."""
        if method == b"HEAD":  # a reply's head without its body, as HTTP wants
            exchange = Exchange(lambda status, headers, _body: respond(status, headers, b""))
        else:
            exchange = Exchange(respond)
        msg = dns_message(method, target, content_type, body)
        if isinstance(msg, Refusal):
            exchange.refuse(msg)
            return
        mono = time.monotonic()
        self.last_active = mono
        before = self.outstanding
        self._query(msg, int(mono), exchange.send, exchange.unanswered)
        if self.outstanding == before and not exchange.done:  # the pipeline found no query in it
            exchange.refuse(Refusal(400, "not a DNS query"))

    def write(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def write_records(self, records: list[bytes]) -> None:
        """Each item its own TLS record, all in one socket write."""
        if not self.transport.is_closing():
            self.transport.writelines(records)


class Http2:
    """HTTP/2 (heimdall/http2.py): streams answered in any order, each within the client's windows."""

    def __init__(self, conn: DohConnection):
        self.conn = conn
        self.frames = Http2Connection(self.request, conn.write_records, conn.transport.close)
        self.frames.flush()  # our SETTINGS, first thing on the connection
        self.receive = self.frames.receive

    def request(self, sid: int, method: bytes, target: bytes, content_type: bytes | None, body: bytes) -> None:
        self.conn.request(method, target, content_type, body, partial(self.frames.respond, sid))


class Http1:
    """HTTP/1.1: one request at a time; pipelined ones wait in h11's buffer for their turn."""

    def __init__(self, conn: DohConnection):
        self.conn = conn
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self.req: h11.Request | None = None
        self.body = bytearray()
        self.waiting = False  # a request is being answered
        self.processing = False

    def receive(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except RuntimeError:  # bytes after the client closed
            return
        self.process()

    def process(self) -> None:
        self.processing = True
        try:
            while not self.waiting and not self.conn.transport.is_closing():
                try:
                    event = self.h11.next_event()
                except h11.RemoteProtocolError as exc:
                    self.fail(exc.error_status_hint)
                    return
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                self.event(event)
        finally:
            self.processing = False

    def event(self, event: object) -> None:
        if isinstance(event, h11.Request):
            self.req, self.body = event, bytearray()
        elif isinstance(event, h11.Data):
            if len(self.body) <= MAX_MESSAGE:
                self.body.extend(event.data)
        elif isinstance(event, h11.EndOfMessage) and self.req is not None:
            self.waiting = True
            req = self.req
            ctype = next((v for k, v in req.headers if k == b"content-type"), None)
            self.conn.request(req.method, req.target, ctype, bytes(self.body), self.respond)
        elif isinstance(event, h11.ConnectionClosed):
            self.conn.transport.close()

    def respond(self, status: int, headers: Headers, body: bytes) -> None:
        if self.conn.transport.is_closing() or self.h11.our_state is not h11.SEND_RESPONSE:
            return
        try:
            self.send_whole(status, headers, body)
        except h11.LocalProtocolError:
            self.conn.transport.close()
            return
        self.waiting = False
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            self.conn.transport.close()  # the client asked to close, or the exchange cannot go on
            return
        self.h11.start_next_cycle()
        if not self.processing:  # a reply after a miss: go on with requests that arrived meanwhile
            self.process()

    def fail(self, status: int) -> None:
        """A request h11 cannot parse: say so if a reply can still be sent, then close."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # h11 lets a server answer a broken request
            headers, body = refusal_headers(Refusal(status, "bad HTTP request"))
            try:
                self.send_whole(status, headers, body)
            except h11.LocalProtocolError:
                pass
        self.conn.transport.close()

    def send_whole(self, status: int, headers: Headers, body: bytes) -> None:
        for event in (h11.Response(status_code=status, headers=list(headers), reason=phrase(status)), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.conn.write(self.h11.send(event) or b"")

def phrase(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode()
