"""The load generator's DNS over QUIC connection (RFC 9250): aioquic over a connected UDP socket.

Each query is a stream of its own, sent with Message ID 0 as DoQ wants; the
stream remembers the query's ID and the reply gets it back, so the worker
matches replies by ID as for every other transport. QUIC needs timers (acks,
loss recovery): the worker asks `timer_at` and calls `on_timer` when it is
due (tools/stream_worker.py). aioquic is pure Python on top of OpenSSL's
ciphers, so this client costs more CPU per query than the TLS ones: with one
process it measures the generator before a fast server.
"""

from __future__ import annotations

import socket
import ssl
import time

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from heimdall import doqwire
from tools.stream_clients import RECV_SIZE, ConnectionLost, StreamOptions


def quic_configuration(opts: StreamOptions, server_name: str) -> QuicConfiguration:
    """Verification on unless `insecure`; the CA file or the system's CAs (aioquic's certifi when neither)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[doqwire.ALPN], server_name=server_name,
                               verify_mode=ssl.CERT_NONE if opts.insecure else ssl.CERT_REQUIRED)
    config.load_verify_locations(cadata=doqwire.trust_anchors(opts.ca_file or ""))
    return config


class DoqConnection:
    """One QUIC connection; `send` opens a stream per query."""

    def __init__(self, family: int, sockaddr: tuple, client: int, config: QuicConfiguration) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:
            self.sock.connect(sockaddr)
        except OSError as exc:
            self.sock.close()
            raise ConnectionLost(f"connect: {exc.strerror or exc}", connect=True) from None
        self.peer = self.sock.getpeername()
        self.fd = self.sock.fileno()
        self.client = client
        self.queries = 0
        self.outstanding: set[int] = set()
        self.retired = False
        self.polled_out = True
        self.eof = False
        self.http_errors = 0  # streams the server reset (counted with DoH's HTTP errors)
        self.ready = False
        self.ids: dict[int, bytes] = {}  # stream -> its query's ID, until answered or given up
        self.streams: dict[bytes, int] = {}  # the other way
        self.inbox: dict[int, bytearray] = {}
        self.quic = QuicConnection(configuration=config)
        self.quic.connect(self.peer, now=time.monotonic())
        try:
            self._transmit()
        except ConnectionLost:
            self.sock.close()
            raise

    @property
    def timer_at(self) -> float | None:
        """When on_timer is due (time.monotonic seconds), or None."""
        return self.quic.get_timer()

    def wants_write(self) -> bool:
        return False  # a datagram that would block is dropped: QUIC sends it again

    def send(self, msg: bytes) -> None:
        sid = self.quic.get_next_available_stream_id()
        self.ids[sid] = msg[:2]
        self.streams[msg[:2]] = sid
        self.quic.send_stream_data(sid, doqwire.framed(msg), end_stream=True)
        self._transmit()

    def abandon(self, qid: int) -> None:
        """The query timed out: stop its stream (DOQ_REQUEST_CANCELLED), so a server that never answers
        does not keep the stream, and with it one of the streams it allows, for the connection's life."""
        sid = self.streams.pop(qid.to_bytes(2, "big"), None)
        if sid is None or self.ids.pop(sid, None) is None:
            return
        self.inbox.pop(sid, None)
        try:
            self.quic.stop_stream(sid, doqwire.REQUEST_CANCELLED)
            self.quic.reset_stream(sid, doqwire.REQUEST_CANCELLED)
        except (ValueError, RuntimeError):  # its state is gone already
            return
        self._transmit()

    def on_writable(self) -> None:
        self._transmit()

    def on_readable(self) -> list[bytes]:
        now = time.monotonic()
        failed: OSError | None = None
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # port unreachable: nothing listens there
                failed = exc
                break
            self.quic.receive_datagram(data, self.peer, now=now)
        out = self._after()
        if failed is not None:
            if out:  # what came before it counts: then the connection closes as one the server closed
                self.eof = True
                return out
            raise ConnectionLost(f"receive: {failed.strerror or failed}", connect=not self.ready)
        return out

    def on_timer(self) -> list[bytes]:
        self.quic.handle_timer(now=max(self.quic.get_timer() or 0.0, time.monotonic()))
        return self._after()

    def _after(self) -> list[bytes]:
        out = self._events()
        self._transmit()
        return out

    def _events(self) -> list[bytes]:
        out = []
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                buf = self.inbox.setdefault(event.stream_id, bytearray())
                buf += event.data
                if event.end_stream:
                    msg = doqwire.message(self.inbox.pop(event.stream_id))
                    qid = self.ids.pop(event.stream_id, None)
                    if qid is not None:
                        self.streams.pop(qid, None)
                        if msg is not None and len(msg) >= 12:
                            out.append(qid + msg[2:])
            elif isinstance(event, events.StreamReset):
                self.inbox.pop(event.stream_id, None)
                qid = self.ids.pop(event.stream_id, None)
                if qid is not None:
                    self.streams.pop(qid, None)
                self.http_errors += 1
            elif isinstance(event, events.HandshakeCompleted):
                self.ready = True
            elif isinstance(event, events.ConnectionTerminated):
                if not self.ready:
                    raise ConnectionLost(f"QUIC handshake: {event.reason_phrase or event.error_code}", handshake=True)
                self.eof = True
        return out

    def _transmit(self) -> None:
        for data, _addr in self.quic.datagrams_to_send(now=time.monotonic()):
            try:
                self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise ConnectionLost(f"send: {exc.strerror or exc}", connect=not self.ready) from None

    def close(self) -> None:
        if not self.eof:
            self.quic.close(error_code=doqwire.NO_ERROR)
            try:
                self._transmit()
            except ConnectionLost:
                pass
        self.sock.close()
