"""The DNS over QUIC listener (RFC 9250): each query on a stream of its own, answered on that stream.

aioquic's QuicServer reads the worker's UDP socket (bound like the others,
SO_REUSEPORT with N workers: a client's datagrams reach one worker) and makes
a DoqConnection per QUIC connection. A stream that ends carrying one whole
DNS message with ID 0 goes through the rate limit and the pipeline like a TCP
query; its reply goes back on the stream with ID 0, and ends it. Anything
else on a stream (no message, more than one, a non-zero ID) is a protocol
error: RFC 9250 4.3.3 closes the connection with DOQ_PROTOCOL_ERROR.

The connection limits and the idle timeout of HEIMDALL_TCP_* hold here as for
DoT and DoH (a TcpListener of its own counts the connections): a connection
is active when a whole query arrives, and one idle for the timeout is closed;
a handshake must be done within the timeout, and no more handshakes may be
under way than connections are allowed (a client's first Initial past that
is answered with CONNECTION_REFUSED before any TLS work: `DoqServer`). A
connection has at most MAX_STREAMS queries open, each stream at most one
message long (`bounded`). A stream that gets no answer (rate limit, internal
error) or that the client reset is reset.
The certificate is the DoT and DoH listeners' one, re-read on SIGHUP for new
connections.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from heimdall import doqwire
from heimdall.config import Config
from heimdall.pipeline import Pipeline
from heimdall.tcp import TcpListener, packed_ip, submit
from heimdall.tls import TlsError
from heimdall.transport import Transport

MAX_STREAMS = 32  # queries a client may have open on one connection, as TcpConnection.MAX_PIPELINE
MAX_BUFFERED = 256 * 1024  # bytes of unfinished queries per connection: a DNS query is rarely past 512


def bounded(quic: QuicConnection) -> QuicConnection:
    """At most MAX_STREAMS streams open, and never more bytes on one than a DNS message can have.

    aioquic gives a client 128 streams, raises a stream's flow-control limit whenever data
    comes past half of it, and fills a gap in a stream's data with zeros until the gap is
    filled: bytes sent far ahead on many streams would grow buffers that no event shows us.
    A DoQ stream carries one message, so its first limit (MAX_MESSAGE, server_configuration)
    is all it needs. These are aioquic's own attributes (its version is pinned in
    constraints.txt; tests/test_doq.py holds both bounds).
    """
    streams = quic._local_max_streams_bidi
    streams.value = streams.sent = MAX_STREAMS
    quic._write_stream_limits = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return quic


class Reply:
    """Where one query's answer goes: its stream, ended with it; reset when no answer will come
    (dropped by the rate limit, an internal error: RFC 9250 4.3.2), so the stream is freed."""

    __slots__ = ("conn", "sid", "over")

    def __init__(self, conn: "DoqConnection", sid: int) -> None:
        self.conn, self.sid, self.over = conn, sid, False

    def send(self, reply: bytes, client: object = None) -> None:
        if not self.over:
            self.over = True
            self.conn.write(self.sid, doqwire.framed(reply))

    def unanswered(self, status: int = 500) -> None:
        if not self.over:
            self.over = True
            self.conn.reset(self.sid, doqwire.EXCESSIVE_LOAD if status == 429 else doqwire.INTERNAL_ERROR)

    def done(self) -> None:
        """The query's miss is over."""
        self.conn.miss_done()
        self.unanswered()


class DoqConnection(QuicConnectionProtocol):
    """One client's QUIC connection: its streams' queries, answered in any order."""

    def __init__(self, quic: QuicConnection, server: "DoqListener") -> None:
        super().__init__(bounded(quic))
        self.server = server
        self.listener = server.limits
        self.pipeline = server.limits.pipeline
        self.inbox: dict[int, bytearray] = {}
        self.outstanding = 0
        self.last_active = time.monotonic()
        self.peer: object = None
        self.peer_ip = b""
        self.admitted: bool | None = None  # None until the handshake is done; True: counted by the listener
        self.buffered = 0  # bytes of queries not yet whole, all streams together
        self.closing = False
        # the handshake must be done within the idle timeout, and only so many may be under way
        self.idle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            server.config.tcp_idle_timeout, self._handshake_overdue)
        server.handshaking.add(self)

    def datagram_received(self, data: bytes | str, addr: object) -> None:
        if self.peer is None:
            self.peer = addr
        super().datagram_received(data, addr)

    def _handshake_overdue(self) -> None:
        self.idle = None
        if self.admitted is None:
            self.close(doqwire.NO_ERROR, "handshake not done in time")

    def close(self, error_code: int = doqwire.NO_ERROR, reason_phrase: str = "") -> None:
        if not self.closing:
            self.closing = True
            super().close(error_code, reason_phrase)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):  # the client gave up on it: so do we, freeing the stream
            self.buffered -= len(self.inbox.pop(event.stream_id, b""))
            if event.stream_id % 4 == 0:
                self.reset(event.stream_id, doqwire.REQUEST_CANCELLED)
        elif isinstance(event, events.HandshakeCompleted) and self.admitted is None:
            self._admit()
        elif isinstance(event, events.ConnectionTerminated):
            self.closing = True
            self.server.handshaking.discard(self)
            self.forget()

    def _admit(self) -> None:
        """The handshake is done: a connection of the listener's, if there is room for it."""
        self.server.handshaking.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        lst = self.listener
        ip = packed_ip(self.peer)
        if not self.server.accepting or not lst.make_room(ip):
            self.admitted = False
            lst.counters.tcp_rejected += 1
            self.close(doqwire.EXCESSIVE_LOAD, "too many connections")
            return
        self.peer_ip = ip
        self.admitted = True
        lst.hold(self)
        self._arm()

    def _stream_data(self, sid: int, data: bytes, end: bool) -> None:
        if self.closing:
            return
        if sid % 4 != 0:  # only client-initiated bidirectional streams carry queries
            self._protocol_error("a query on a stream that is not the client's bidirectional one")
            return
        buf = self.inbox.setdefault(sid, bytearray())
        buf += data
        self.buffered += len(data)
        if len(buf) > doqwire.MAX_MESSAGE:
            self._protocol_error("more than one DNS message on a stream")
        elif self.buffered > MAX_BUFFERED:
            self.close(doqwire.EXCESSIVE_LOAD, "too many bytes of unfinished queries")
        elif end:
            del self.inbox[sid]
            self.buffered -= len(buf)
            msg = doqwire.message(buf)
            if msg is None or len(msg) < 12 or msg[0] or msg[1]:
                self._protocol_error("a stream without one whole DNS message with ID 0")
                return
            self._query(sid, msg)

    def _query(self, sid: int, msg: bytes) -> None:
        if not self.admitted or self.closing:
            return  # refused, or past a protocol error: its close is on the way
        mono = time.monotonic()
        self.last_active = mono
        r = Reply(self, sid)
        if submit(self.pipeline, Transport.DOQ, msg, int(mono), self.peer, self.peer_ip, r.send, r.done,
                  r.unanswered):
            self.outstanding += 1
        else:
            r.unanswered()  # answered already, or dropped without a word

    def write(self, sid: int, data: bytes) -> None:
        """The whole reply, and the end of the stream."""
        if self.closing:
            return
        try:
            self._quic.send_stream_data(sid, data, end_stream=True)
        except (ValueError, RuntimeError):  # the client reset or stopped the stream: no one waits for it
            return
        self._transmit_soon()

    def reset(self, sid: int, code: int) -> None:
        if self.closing:
            return
        try:
            self._quic.reset_stream(sid, code)
        except ValueError:  # its state is gone already
            return
        self._transmit_soon()

    def miss_done(self) -> None:
        self.outstanding -= 1
        self.last_active = time.monotonic()

    def _protocol_error(self, reason: str) -> None:
        self.close(doqwire.PROTOCOL_ERROR, reason)

    def _arm(self) -> None:
        delay = self.last_active + self.listener.config.tcp_idle_timeout - time.monotonic()
        self.idle = asyncio.get_running_loop().call_later(max(0.05, delay), self._check_idle)

    def _check_idle(self) -> None:
        if not self.admitted:
            return
        if self.outstanding == 0 and time.monotonic() - self.last_active >= self.listener.config.tcp_idle_timeout:
            self.shut("idle")
        else:
            self._arm()

    def shut(self, reason: str = "closing") -> None:
        self.forget()
        self.close(doqwire.NO_ERROR, reason)

    def forget(self) -> None:
        """No longer one of the listener's connections (closed, or being closed to make room)."""
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if self.admitted:
            self.admitted = False
            self.listener.release(self)


class DoqServer(QuicServer):
    """aioquic's server, which turns a connection away before any TLS work when the listener has
    as many handshakes under way as it allows connections: a flood of Initials costs an Initial
    each (a key derivation and one seal), not a handshake each."""

    def __init__(self, listener: "DoqListener", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listener = listener

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        lst = self.listener
        if len(lst.handshaking) >= lst.config.tcp_max_connections and isinstance(data, bytes):
            cfg = lst.quic_config
            header = doqwire.first_initial(data, cfg.connection_id_length, cfg.supported_versions)
            if header is not None and header.destination_cid not in self._protocols:
                lst.limits.counters.tcp_rejected += 1
                assert self._transport is not None
                self._transport.sendto(doqwire.refusal(header), addr)
                return
        super().datagram_received(data, addr)


class DoqListener:
    """One worker's DoQ server on its bound UDP socket."""

    def __init__(self, config: Config, pipeline: Pipeline, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.limits = TcpListener(pipeline, config, Transport.DOQ)  # counts the connections, as for DoT
        self.accepting = True
        self.handshaking: set[DoqConnection] = set()
        self.quic_config: QuicConfiguration = self.configuration(config)
        self.server: QuicServer | None = None

    @staticmethod
    def configuration(cfg: Config) -> QuicConfiguration:
        """QUIC's settings with the certificate as the files hold it now (TlsError when it does not load)."""
        try:
            # QUIC's own idle timeout (silent) is a backstop: ours, which counts whole queries only, comes first
            return doqwire.server_configuration(cfg.tls_cert_file, cfg.tls_key_file, cfg.tcp_idle_timeout + 5)
        except (OSError, ValueError) as exc:
            raise TlsError(f"cannot load the TLS certificate {cfg.tls_cert_file} for DoQ: {exc}") from None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def connection(quic: QuicConnection, **kwargs: object) -> DoqConnection:
            return DoqConnection(quic, self)

        def server() -> QuicServer:
            return DoqServer(self, configuration=self.quic_config, create_protocol=connection)

        _, self.server = await loop.create_datagram_endpoint(server, sock=self.sock)

    def use_certificate(self, fresh: QuicConfiguration) -> None:
        """New connections get the certificate of `fresh` (a configuration())."""
        self.quic_config.certificate = fresh.certificate
        self.quic_config.certificate_chain = fresh.certificate_chain
        self.quic_config.private_key = fresh.private_key

    def stop_accepting(self) -> None:
        """New connections are closed after their handshake; the open ones keep their streams."""
        self.accepting = False

    def busy(self) -> bool:
        return self.limits.busy()

    def close_all(self) -> None:
        self.limits.close_all()
        if self.server is not None:
            self.server.close()
