"""The TCP listener (RFC 7766): length-prefixed queries, several per connection, answered as they complete.

Each message goes through the rate limit and then the pipeline, like a UDP
datagram; a connection stops reading while 32 of its queries are unanswered
or while its client does not read its answers, so memory stays bounded.

Connections cannot be hoarded. A connection is active when a whole query
arrives or an answer is sent; bytes of a message that never completes do not
count, so a slow-loris client (half a length prefix, half a message) is closed
after HEIMDALL_TCP_IDLE_TIMEOUT like an idle one. At HEIMDALL_TCP_MAX_CONNECTIONS
(per worker) or HEIMDALL_TCP_MAX_CONNECTIONS_PER_IP (per client address) a new
connection closes the oldest idle one (no query of its own unanswered) to take
its place, and is refused only when none is idle: thousands of idle
connections cannot keep a new client out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable, Protocol

from heimdall.config import Config
from heimdall.pipeline import Pipeline, Send
from heimdall.transport import Transport

log = logging.getLogger("heimdall.tcp")


class Held(Protocol):
    """What the listener knows of a connection: enough to count it, find the oldest idle one and close it."""

    outstanding: int  # queries not answered yet
    last_active: float
    peer_ip: bytes

    def forget(self) -> None: ...

    def shut(self) -> None: ...


class TcpListener:
    """The open connections of one worker, and the limits they share.

    DoT, DoH and DoQ listeners have one of their own (same settings, own count), so
    connections of one transport never close another's to make room. A connection
    here is anything with the attributes of `Held`."""

    def __init__(self, pipeline: Pipeline, config: Config, transport: Transport = Transport.TCP):
        self.pipeline = pipeline
        self.transport = transport
        self.config = config
        self.counters = pipeline.counters
        self.conns: set[Held] = set()
        self.by_ip: dict[bytes, int] = {}  # open connections per client address

    def protocol(self) -> "TcpConnection":
        return TcpConnection(self)

    def busy(self) -> bool:
        return any(c.outstanding for c in self.conns)

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.shut()

    def hold(self, conn: Held) -> None:
        """Count `conn` (its peer_ip set) as one of the open connections."""
        self.conns.add(conn)
        self.by_ip[conn.peer_ip] = self.by_ip.get(conn.peer_ip, 0) + 1
        self.counters.tcp_connections += 1

    def release(self, conn: Held) -> None:
        """No longer count `conn` (closed, or being closed to make room)."""
        if conn in self.conns:
            self.conns.discard(conn)
            left = self.by_ip[conn.peer_ip] - 1
            if left:
                self.by_ip[conn.peer_ip] = left
            else:
                del self.by_ip[conn.peer_ip]

    def make_room(self, ip: bytes) -> bool:
        """Room for one more connection from `ip`: the oldest idle one goes if a limit is reached
        (its client's own when the per-client limit is the one); False when none is idle."""
        cfg = self.config
        per_ip = cfg.tcp_max_connections_per_ip
        if per_ip and self.by_ip.get(ip, 0) >= per_ip:
            return self._evict_oldest_idle(ip)
        if len(self.conns) >= cfg.tcp_max_connections:
            return self._evict_oldest_idle(None)
        return True

    def _evict_oldest_idle(self, ip: bytes | None) -> bool:
        idle = [c for c in self.conns if c.outstanding == 0 and (ip is None or c.peer_ip == ip)]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.last_active)
        oldest.forget()
        oldest.shut()
        self.counters.tcp_evicted += 1
        return True


class TcpConnection(asyncio.BaseProtocol):
    """A plain protocol (data_received). Not an asyncio.Protocol by class, so that DohConnection,
    one of these with get_buffer, is taken by the loop as the buffered protocol it is."""

    MAX_PIPELINE = 32

    def __init__(self, listener: TcpListener):
        self.listener = listener
        self.pipeline = listener.pipeline
        self.buf = bytearray()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.outstanding = 0
        self.last_active = time.monotonic()
        self.eof = False
        self.write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.peer: object = None
        self.peer_ip = b""
        self.batch: list[bytes] | None = None  # replies made while reading, written when the read is done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        lst = self.listener
        self.peer = transport.get_extra_info("peername")
        ip = packed_ip(self.peer)
        if not lst.make_room(ip):
            lst.counters.tcp_rejected += 1
            transport.close()
            return
        self.peer_ip = ip
        lst.hold(self)
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.last_active + self.listener.config.tcp_idle_timeout - time.monotonic()
        self._timer = loop.call_later(max(0.05, delay), self._check_idle)

    def _check_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.outstanding == 0 and time.monotonic() - self.last_active >= self.listener.config.tcp_idle_timeout:
            self.transport.close()
        else:
            self._arm()

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its queries (bounded memory)."""
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.outstanding < self.MAX_PIPELINE:
            self.transport.resume_reading()

    def shut(self) -> None:
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget()
        if self._timer is not None:
            self._timer.cancel()

    def forget(self) -> None:
        """No longer one of the listener's connections (closed, or being closed to make room)."""
        self.listener.release(self)

    def eof_received(self) -> bool:
        self.eof = True
        # keep open to send pending answers, else close now (TLS cannot stay half-open: it closes anyway)
        return self.outstanding > 0 and self.listener.transport is Transport.TCP

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        mono = time.monotonic()
        now = int(mono)
        batch: list[bytes] = []
        self.batch = batch
        try:
            while len(buf) >= 2:
                size = (buf[0] << 8) | buf[1]
                if len(buf) < 2 + size:
                    break
                msg = bytes(buf[2:2 + size])
                del buf[:2 + size]
                self.last_active = mono  # a whole query: the bytes of one that never ends do not count
                self._query(msg, now, self.send)
        finally:
            self.batch = None  # replies made later (misses) go out as they come
        if batch and not self.transport.is_closing():
            self.transport.writelines(batch)  # one socket write (and over TLS, a record each)
        if self.outstanding >= self.MAX_PIPELINE:
            self.transport.pause_reading()

    def _query(self, msg: bytes, now: int, send: Send, unanswered: Callable[[int], None] | None = None) -> None:
        if submit(self.pipeline, self.listener.transport, msg, now, self.peer, self.peer_ip, send,
                  self._miss_done, unanswered):
            self.outstanding += 1

    def send(self, reply: bytes, client: object = None) -> None:
        """One length-prefixed reply (the pipeline's `send`: the client is always this connection's peer)."""
        if self.batch is not None:
            self.batch.append(len(reply).to_bytes(2, "big") + reply)
        elif not self.transport.is_closing():
            self.transport.write(len(reply).to_bytes(2, "big") + reply)

    def _miss_done(self) -> None:
        self.outstanding -= 1
        self.last_active = time.monotonic()
        if self.outstanding < self.MAX_PIPELINE and not self.write_paused and not self.transport.is_closing():
            self.transport.resume_reading()
        if self.eof and self.outstanding == 0:
            self.transport.close()


class TlsConnection(TcpConnection):
    """A connection inside TLS (DoT, and DoH's base). Buffered: TLS decrypts into one buffer of ours,
    where a plain protocol costs a fresh 256 KiB bytes object for every record it reads. One buffer
    serves every connection: the loop fills it and hands it over in one go, and we copy out."""

    INBOX = memoryview(bytearray(65536))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.INBOX

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.INBOX[:nbytes]))


def submit(p: Pipeline, transport: Transport, msg: bytes, now: int, peer: object, peer_ip: bytes, send: Send,
           done: Callable[[], None], unanswered: Callable[[int], None] | None = None) -> bool:
    """A query from a stream: rate limit, then the pipeline; True when a miss was started (`done` follows).
    `unanswered(status)` is told when no reply will come (429: dropped by the rate limit, 500: an
    internal error), for transports that must say so."""
    p.counters.queries_tcp += 1  # every stream transport: TCP, DoT, DoH, DoQ
    if p.admit is not None and not p.admit(peer_ip):
        refusal = p.limited(msg)
        if refusal is not None:
            send(refusal, peer)
        elif unanswered is not None:
            unanswered(429)
        return False
    try:
        return p.dispatch(msg, now, transport, peer, send, done)
    except Exception as exc:  # noqa: BLE001 - a message must never kill the connection's worker
        p.counters.internal_errors += 1
        log.error(f"internal error on a {transport.name} query: {exc!r}")
        if unanswered is not None:
            unanswered(500)
        return False


def packed_ip(peer: object) -> bytes:
    """The peer's address packed (4 or 16 bytes), as the rate limit takes it; b"" when unknown."""
    try:
        host = peer[0]  # type: ignore[index]
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, TypeError, IndexError):
        return b""
