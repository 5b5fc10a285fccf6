"""DNS over QUIC (RFC 9250) to one upstream: each query a stream of one QUIC connection.

aioquic's QuicConnection does QUIC and TLS 1.3 (sans-IO); this connection owns
a connected UDP socket of the loop, feeds it the datagrams that arrive and
sends what it has to send, and arms its one timer (loss recovery, idle). It
plugs into StreamPool like a TLS connection (heimdall/streamupstream.py), so
pooling, backoff, failover and health are those of every stream upstream. A
query leaves with Message ID 0 (doqwire); the reply gets the query's ID back
before it is matched on ID and question like any other. A query given up on
(timeout) stops its stream with DOQ_REQUEST_CANCELLED.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable, cast

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from heimdall import doqwire
from heimdall.streamupstream import IDLE_TIMEOUT, Connection, StreamError, Untaken
from heimdall.upstreamurl import UpstreamUrl


class HandshakeFailed(ConnectionError):
    """The QUIC connection ended before its handshake did: str() says why (a bad certificate, no DoQ)."""


def client_configuration(addr: UpstreamUrl, ca_file: str) -> QuicConfiguration:
    # a little longer than the pool's own idle close, so the server's timer is never the first to fire
    return doqwire.client_configuration(addr.verify_name, ca_file, IDLE_TIMEOUT + 5)


class Doq(Connection, asyncio.DatagramProtocol):
    """One QUIC connection; queries are its streams, answered in any order."""

    def __init__(self, addr: UpstreamUrl, on_lost: Callable[[Connection], None],
                 refused: Callable[[Connection, str], None], config: QuicConfiguration) -> None:
        super().__init__(addr, on_lost)
        self.refused = refused  # the server turned the connection away before answering: a failed attempt
        self.quic = QuicConnection(configuration=config)
        self.peer: tuple = ()  # as the socket names it (4 items for IPv6): aioquic drops datagrams from others
        self.answers = 0
        self.by_stream: dict[int, int] = {}  # stream -> the qid of its query, until answered or given up
        self.by_qid: dict[int, int] = {}
        self.inbox: dict[int, bytearray] = {}
        self.handshake: asyncio.Future[None] = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None

    async def open(self, tls: ssl.SSLContext | None) -> None:
        host, port = self.addr.host, self.addr.port
        udp, _ = await self.loop.create_datagram_endpoint(lambda: self, remote_addr=(host, port))
        self.transport = cast(asyncio.Transport, udp)  # close, abort and is_closing are all the pool uses
        self.peer = udp.get_extra_info("peername")
        try:
            if self.closed:  # the pool closed it while the socket was being made
                raise HandshakeFailed("closed before the handshake began")
            self.quic.connect(self.peer, now=self.loop.time())
            self.flush()
            await asyncio.shield(self.handshake)
            if self.closed:
                raise HandshakeFailed("closed during the handshake")
        except BaseException:  # failed or timed out: nothing may stay open
            self.closed = True
            udp.close()
            raise
        self.started()
        self.ready.set_result(None)
        self._arm_idle()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The socket is up; the connection is, once its handshake is done (open)."""

    def write(self, qid: int, message: bytes) -> None:
        sid = self.quic.get_next_available_stream_id()
        self.quic.send_stream_data(sid, doqwire.framed(message), end_stream=True)
        self.by_stream[sid] = qid
        self.by_qid[qid] = sid
        self.flush_soon()

    def flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data, _addr in self.quic.datagrams_to_send(now=self.loop.time()):
            transport.sendto(data)  # type: ignore[attr-defined]
        at = self.quic.get_timer()
        if at != self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(at, self._on_timer) if at is not None else None
            self.timer_at = at

    def _on_timer(self) -> None:
        at = self.timer_at or 0.0
        self.timer = self.timer_at = None
        self.quic.handle_timer(now=max(at, self.loop.time()))  # the loop may fire a timer a little early
        self._events()
        self.flush()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.reads += 1
        self.quic.receive_datagram(data, self.peer, now=self.loop.time())  # connected: only the peer's come
        self._events()
        closing = self.quic._close_event  # the server's close: aioquic tells of it only after 3 PTOs of draining
        if closing is not None and not self.closed and self.handshake.done():
            self._terminated(closing)  # so no query is written into a connection that is draining
        self.flush()

    def error_received(self, exc: Exception) -> None:
        """Port unreachable: nothing listens there any more (a server that died without a goodbye).
        Its queries fail over now, not at their timeout."""
        if not isinstance(exc, ConnectionRefusedError):
            return
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeFailed(f"nothing answers QUIC there ({exc.strerror or exc})"))
        elif not self.closed:
            self.closed = True
            self.fail(f"{self.addr}: {exc.strerror or exc}")
            if self.transport is not None:
                self.transport.close()

    def _events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self._stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.StreamReset):
                self._stream_failed(event.stream_id, f"reset the stream (error {event.error_code:#x})")
            elif isinstance(event, events.HandshakeCompleted):
                if not self.handshake.done():
                    self.handshake.set_result(None)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(event)

    def _stream_data(self, sid: int, data: bytes, end: bool) -> None:
        if sid not in self.by_stream:
            return  # a query given up on: its late reply is of no use
        buf = self.inbox.setdefault(sid, bytearray())
        buf += data
        if len(buf) > doqwire.MAX_MESSAGE:
            self._stream_failed(sid, "sent more than one DNS message on a stream")
        elif end:
            del self.inbox[sid]
            msg = doqwire.message(buf)
            if msg is None or len(msg) < 12:
                self._stream_failed(sid, "ended a stream without one whole DNS message")
                return
            qid = self.by_stream.pop(sid)
            self.answers += 1
            self.deliver(qid, qid.to_bytes(2, "big") + msg[2:])

    def _stream_failed(self, sid: int, reason: str) -> None:
        self.inbox.pop(sid, None)
        qid = self.by_stream.pop(sid, None)
        if qid is not None:
            self.fail_query(qid, f"{self.addr} {reason}")

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        reason = event.reason_phrase or f"error {event.error_code:#x}"
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeFailed(f"QUIC handshake failed: {reason}"))
            return
        if self.closed:
            return  # told already (at the close frame, or it was ours)
        app = event.frame_type is None  # DoQ's own codes (RFC 9250 4.3), not QUIC's transport ones
        if app and event.error_code == doqwire.EXCESSIVE_LOAD and not self.answers:
            self.refused(self, f"the server turned the connection away: {reason}")  # backoff, as for a refusal
        self.closed = True
        # A server that closes without an error (idle, shutting down) works on none of the queries left:
        # they are asked once more on another connection, as past an HTTP/2 GOAWAY
        kind = Untaken if app and event.error_code == doqwire.NO_ERROR else StreamError
        self.fail(f"{self.addr} closed the QUIC connection: {reason}", kind)
        if self.transport is not None:
            self.transport.close()

    def done(self, qid: int) -> None:
        sid = self.by_qid.pop(qid, None)
        if sid is not None and self.by_stream.pop(sid, None) is not None and not self.closed:
            self.inbox.pop(sid, None)
            try:
                self.quic.stop_stream(sid, doqwire.REQUEST_CANCELLED)  # we gave up on it (timeout)
            except ValueError:  # the stream is gone already
                pass
            self.flush_soon()
        super().done(qid)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.quic.close(error_code=doqwire.NO_ERROR)
            self.flush()
        super().close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # a peer that answers nothing gets no goodbye

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.handshake.done():  # closed by the pool mid-handshake: open() ends now
            self.handshake.set_exception(HandshakeFailed("closed before the handshake was done"))
        super().connection_lost(exc)
