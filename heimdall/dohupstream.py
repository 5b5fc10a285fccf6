"""DNS over HTTPS (RFC 8484) to one upstream: many queries as streams of one HTTP/2 connection.

h2 is a sans-IO state machine: it turns bytes into events and requests into
bytes, and we move the bytes over the same asyncio TLS connections as DNS
over TLS (heimdall/streamupstream.py), so DoH needs no HTTP framework or
event loop of its own. Each query is a POST of `application/dns-message`;
the answer is the stream's body. RFC 8484 suggests ID 0 for HTTP caches, but
no cache sits between us and the upstream, so the ID stays random and the
reply must still match ID and question. A non-200 status, a reset stream, a
GOAWAY or a broken HTTP/2 session is an upstream failure (failover).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from heimdall import wire
from heimdall.streamupstream import MAX_INFLIGHT, Connection, StreamError
from heimdall.upstreamurl import UpstreamUrl

CONTENT_TYPE = "application/dns-message"


@dataclass
class Exchange:
    """One query's stream: the query's ID, the answer's status and body so far, the body left to send."""

    qid: int
    status: str = ""
    body: bytearray = field(default_factory=bytearray)
    unsent: bytes = b""


# Headers as bytes, and ours neither checked nor normalized (we make them; h2's checks of a DNS
# POST's fixed headers were most of its cost per query). What the server sends is still checked.
H2_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                      normalize_outbound_headers=False)


class Http2(Connection):
    """One HTTP/2 connection; queries are its streams, answered in any order."""

    def __init__(self, addr: UpstreamUrl, on_lost: Callable[[Connection], None],
                 refused: Callable[[Connection, str], None]) -> None:
        super().__init__(addr, on_lost)
        self.refused = refused  # the peer would not speak HTTP/2: a failed connection attempt
        self.h2 = h2.connection.H2Connection(H2_CONFIG)
        self.streams: dict[int, Exchange] = {}
        self.by_qid: dict[int, int] = {}
        authority = addr.verify_name if ":" not in addr.verify_name else f"[{addr.verify_name}]"
        self.authority = authority if addr.port == 443 else f"{authority}:{addr.port}"

    def usable(self) -> bool:
        limit = min(MAX_INFLIGHT, self.h2.remote_settings.max_concurrent_streams)
        return super().usable() and self.load < limit

    def started(self) -> None:
        assert self.transport is not None
        tls = self.transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        if alpn != "h2":
            self.refused(self, f"the server did not agree to HTTP/2 (ALPN {alpn or 'none'})")
            return
        self.h2.initiate_connection()
        self._flush()

    def write(self, qid: int, message: bytes) -> None:
        try:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", self.authority),
                                       (":path", self.addr.path), ("content-type", CONTENT_TYPE),
                                       ("accept", CONTENT_TYPE), ("content-length", str(len(message)))])
        except h2.exceptions.H2Error as exc:  # e.g. stream IDs used up, or the session is over
            self._abandon(f"no new HTTP/2 stream to {self.addr}: {exc}")
            raise StreamError(f"no new HTTP/2 stream to {self.addr}") from None
        self.streams[sid] = Exchange(qid, unsent=message)
        self.by_qid[qid] = sid
        self._send_bodies()
        self._flush()

    def done(self, qid: int) -> None:
        sid = self.by_qid.pop(qid, None)
        if sid is not None and self.streams.pop(sid, None) is not None and not self.closed:
            try:  # still open: we gave up on it (timeout), the server may stop working on it
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                self._flush()
            except h2.exceptions.H2Error:
                pass
        super().done(qid)

    def _send_bodies(self) -> None:
        """Send what the flow control windows allow of every body not yet sent."""
        for sid, ex in self.streams.items():
            if not ex.unsent:
                continue
            size = min(len(ex.unsent), self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if size <= 0:
                continue
            chunk, ex.unsent = ex.unsent[:size], ex.unsent[size:]
            self.h2.send_data(sid, chunk, end_stream=not ex.unsent)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.H2Error as exc:
            self._abandon(f"HTTP/2 protocol error from {self.addr}: {exc}")
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._headers(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            ex = self.streams.get(event.stream_id or 0)
            if ex is not None:
                ex.body += event.data or b""
        elif isinstance(event, h2.events.StreamEnded):
            self._answered(event.stream_id or 0)
        elif isinstance(event, h2.events.StreamReset):
            self._stream_failed(event.stream_id or 0, f"stream reset by {self.addr} ({event.error_code!r})")
        elif isinstance(event, h2.events.WindowUpdated):
            self._send_bodies()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._abandon(f"{self.addr} ended the HTTP/2 connection (GOAWAY {event.error_code!r})")

    def _headers(self, sid: int | None, headers: list) -> None:
        ex = self.streams.get(sid or 0)
        if ex is None:
            return
        fields = {bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in headers}
        ex.status = fields.get(":status", "")
        if ex.status != "200":
            self._stream_failed(sid or 0, f"{self.addr} answered HTTP status {ex.status or 'none'}")
        elif fields.get("content-type", "").split(";")[0].strip().lower() != CONTENT_TYPE:
            self._stream_failed(sid or 0, f"{self.addr} answered content-type {fields.get('content-type')!r}")

    def _answered(self, sid: int) -> None:
        ex = self.streams.get(sid)
        if ex is None:
            return
        entry = self.waiting.get(ex.qid)
        if entry is None or entry[1].done():
            return
        question, fut, exact = entry
        if wire.reply_matches(bytes(ex.body), ex.qid, question, exact):
            del self.streams[sid]
            fut.set_result(bytes(ex.body))
        else:
            self._stream_failed(sid, f"{self.addr} answered a stream with a reply that does not match its query")

    def _stream_failed(self, sid: int, reason: str) -> None:
        ex = self.streams.get(sid)
        entry = self.waiting.get(ex.qid) if ex is not None else None
        if entry is not None and not entry[1].done():
            entry[1].set_exception(StreamError(reason))

    def _abandon(self, reason: str) -> None:
        """No new streams here; every query waiting fails over; the connection closes."""
        self.closed = True
        self.fail(reason)
        if self.transport is not None:
            self._flush()
            self.transport.close()
