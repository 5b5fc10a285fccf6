"""The load generator's DNS over HTTPS connection: HTTP/2 (h2) over TLS, one stream per query.

Each query is a POST of application/dns-message to /dns-query (RFC 8484);
the queries of a connection are multiplexed as concurrent streams, so a
persistent connection pipelines like the TCP and DoT clients. The reply's
DNS ID is the query's, so the worker matches replies by ID for every
transport. A reply with an HTTP status other than 200, or a reset stream,
is counted (`http_errors`) and its query left to time out.
"""

from __future__ import annotations

import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tools.stream_clients import READY, ConnectionLost, SendFailed, TlsConnection

DOH_PATH = "/dns-query"


class DohConnection(TlsConnection):
    """One HTTP/2 connection; `send` opens a stream per query."""

    def __init__(self, family: int, sockaddr: tuple, client: int, ctx: ssl.SSLContext,
                 server_name: str | None, authority: str) -> None:
        super().__init__(family, sockaddr, client, ctx, server_name)
        # the request headers are ours and fixed: checking them on every query would cost a third of the send
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
        self.h2.initiate_connection()
        self.out += self.h2.data_to_send()
        self.authority = authority.encode()
        self.bodies: dict[int, bytearray] = {}
        self.status: dict[int, bytes] = {}
        self.http_errors = 0

    def _negotiated(self) -> None:
        proto = self.sock.selected_alpn_protocol()  # type: ignore[attr-defined]
        if proto != "h2":
            raise ConnectionLost(f"TLS handshake: the server did not agree to HTTP/2 (ALPN {proto!r})",
                                 handshake=True)

    def send(self, msg: bytes) -> None:
        conn = self.h2
        try:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", self.authority),
                                    (b":path", DOH_PATH.encode()), (b"content-type", b"application/dns-message"),
                                    (b"accept", b"application/dns-message"),
                                    (b"content-length", str(len(msg)).encode())])
            conn.send_data(sid, msg, end_stream=True)
        except h2.exceptions.H2Error as exc:  # stream limit or flow-control window reached
            self.out += conn.data_to_send()
            raise SendFailed(type(exc).__name__) from None
        self.out += conn.data_to_send()
        if self.state == READY:
            self.flush()

    def _messages(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        conn = self.h2
        try:
            events = conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            raise ConnectionLost(f"HTTP/2: {type(exc).__name__}") from None
        out = []
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.ResponseReceived):
                self.status[ev.stream_id] = dict(ev.headers).get(b":status", b"")
            elif isinstance(ev, h2.events.StreamEnded):
                body = self.bodies.pop(ev.stream_id, None)
                if self.status.pop(ev.stream_id, None) == b"200" and body:
                    out.append(bytes(body))
                else:
                    self.http_errors += 1
            elif isinstance(ev, h2.events.StreamReset):
                self.bodies.pop(ev.stream_id, None)
                self.status.pop(ev.stream_id, None)
                self.http_errors += 1
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.eof = True
        pending = conn.data_to_send()
        if pending:
            self.out += pending
            self.flush()
        return out
