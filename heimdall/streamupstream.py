"""Persistent, pipelined connections to one stream upstream: DNS over TCP (RFC 7766) and TLS (RFC 7858).

A connection per query would cost a TCP (and TLS) handshake per miss, so each
upstream keeps a few connections open and sends many queries down each
without waiting for earlier answers; answers may come in any order and are
matched by ID and question (`wire.reply_matches`), as over UDP. A pool opens
its first connection on the first query and another only when the open ones
are busy, up to MAX_CONNECTIONS, each with at most MAX_INFLIGHT queries; a
connection unused for IDLE_TIMEOUT seconds is closed. A failed connection
attempt (refused, timed out, bad certificate) is logged once and the next
attempt waits for a backoff that doubles with each failure; queries meanwhile
fail at once, so UpstreamPool's failover moves on to the next upstream.
DNS over HTTPS and DNS over QUIC plug into the same pool with connection
classes of their own (heimdall/dohupstream.py, heimdall/doqupstream.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Callable, cast

from heimdall import wire
from heimdall.directssl import DirectSSLObject
from heimdall.upstreamurl import UpstreamUrl

log = logging.getLogger("heimdall.upstream")

MAX_CONNECTIONS = 4      # per upstream
MAX_INFLIGHT = 100       # queries waiting on one connection
SPREAD_AT = 16           # a new connection opens when every open one has this many queries in flight
IDLE_TIMEOUT = 10.0      # seconds a connection may sit unused
CONNECT_TIMEOUT = 5.0    # seconds for TCP and TLS handshakes together
BACKOFF_START = 0.25
BACKOFF_MAX = 10.0


class StreamError(Exception):
    """The connection failed or closed before the answer came: an upstream failure (failover)."""


class Untaken(StreamError):
    """The server never took the query (it refused the stream, or left with GOAWAY before it): safe
    to ask it again on another connection (RFC 9113 8.7), which the pool does once."""


def client_context(ca_file: str, alpn: str) -> ssl.SSLContext:
    """Verified TLS: the system's CAs plus `ca_file`, the host name checked, ALPN offered."""
    ctx = ssl.create_default_context()
    ctx.sslobject_class = DirectSSLObject
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.set_alpn_protocols([alpn])
    return ctx


def describe(exc: BaseException) -> str:
    """A failed connection attempt in words an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class Connection(asyncio.Protocol):
    """One connection's queries in flight; subclasses frame the messages (length prefix, HTTP/2)."""

    def __init__(self, addr: UpstreamUrl, on_lost: Callable[["Connection"], None]) -> None:
        self.addr = addr
        self.on_lost = on_lost
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even when no query waits
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, tuple[bytes, asyncio.Future[bytes], bool]] = {}
        self.closed = False
        self.idle: asyncio.TimerHandle | None = None
        self.queued = 0  # queries that picked this connection and wait for it to be up
        self.reads = 0   # data_received calls: a connection silent for a whole query's wait is dead
        self.flush_due = False  # a write of what this loop turn queued is scheduled

    @property
    def load(self) -> int:
        return len(self.waiting) + self.queued

    def usable(self) -> bool:
        return not self.closed and self.load < MAX_INFLIGHT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        self.started()
        if not self.ready.done():
            self.ready.set_result(None)
        self._arm_idle()

    def started(self) -> None:
        """Hook: the connection (and TLS) is up, before the first query is sent."""

    async def open(self, tls: ssl.SSLContext | None) -> None:
        """Connect and shake hands; OSError or ssl.SSLError when that fails."""
        addr = self.addr
        await self.loop.create_connection(
            lambda: self, addr.host, addr.port, ssl=tls, server_hostname=addr.verify_name if tls is not None else None,
            ssl_handshake_timeout=CONNECT_TIMEOUT if tls is not None else None)

    def send(self, qid: int, question: bytes, message: bytes, exact: bool) -> asyncio.Future[bytes]:
        """Send one query; the future gets its matched reply, or StreamError if the connection fails."""
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.waiting[qid] = (question, fut, exact)
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.write(qid, message)
        return fut

    def write(self, qid: int, message: bytes) -> None:
        """Hook: queue the query's bytes and call flush_soon."""
        raise NotImplementedError

    def flush_soon(self) -> None:
        """Write what is queued at the end of this loop turn. The misses of one read of client queries
        each send from their own task, all in one turn: their queries leave in one write (over TLS,
        one record) rather than one each."""
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self._flush_due)

    def _flush_due(self) -> None:
        self.flush_due = False
        self.flush()

    def flush(self) -> None:
        """Hook: write what is queued."""

    def done(self, qid: int) -> None:
        """The query is over (answered, failed or timed out): forget it."""
        self.waiting.pop(qid, None)
        self._arm_idle()

    def answer(self, data: bytes) -> bool:
        """Hand a reply to the query it matches; False when it matches none (counted by the caller)."""
        if len(data) < 12:
            return False
        qid = int.from_bytes(data[:2], "big")
        entry = self.waiting.get(qid)
        if entry is None or entry[1].done() or not wire.reply_matches(data, qid, entry[0], entry[2]):
            return False
        entry[1].set_result(data)
        return True

    def deliver(self, qid: int, reply: bytes) -> None:
        """The reply that a stream of query `qid`'s own brought (DoH, DoQ): it must still match ID and question."""
        entry = self.waiting.get(qid)
        if entry is None or entry[1].done():
            return
        question, fut, exact = entry
        if wire.reply_matches(reply, qid, question, exact):
            fut.set_result(reply)
        else:
            fut.set_exception(StreamError(f"{self.addr} answered a stream with a reply that does not match its query"))

    def fail_query(self, qid: int, reason: str, kind: type[StreamError] = StreamError) -> None:
        """Query `qid` alone fails with `reason` (its stream did: DoH, DoQ)."""
        entry = self.waiting.get(qid)
        if entry is not None and not entry[1].done():
            entry[1].set_exception(kind(reason))

    def fail(self, reason: str, kind: type[StreamError] = StreamError) -> None:
        """Every query waiting here fails with `reason` (failover takes them elsewhere; Untaken: the pool
        asks them once more first)."""
        for _q, fut, _e in list(self.waiting.values()):
            if not fut.done():
                fut.set_exception(kind(reason))

    def _arm_idle(self) -> None:
        if not self.waiting and not self.closed and self.idle is None and self.transport is not None:
            self.idle = self.loop.call_later(IDLE_TIMEOUT, self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()
        self.fail(f"connection to {self.addr} lost" + (f": {describe(exc)}" if exc else ""))
        self.on_lost(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        elif not self.ready.done():
            self.ready.set_exception(StreamError(f"connection to {self.addr} closed"))

    def abort(self) -> None:
        """Close at once, without the TLS goodbye a silent peer would never answer."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class LengthPrefixed(Connection):
    """DNS over TCP or TLS: each message with its two-byte length (RFC 1035 4.2.2), pipelined."""

    def __init__(self, addr: UpstreamUrl, on_lost: Callable[[Connection], None],
                 mismatched: Callable[[], None]) -> None:
        super().__init__(addr, on_lost)
        self.buffer = bytearray()
        self.out: list[bytes] = []
        self.mismatched = mismatched

    def write(self, qid: int, message: bytes) -> None:
        self.out.append(len(message).to_bytes(2, "big") + message)
        self.flush_soon()

    def flush(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            size = int.from_bytes(buf[:2], "big")
            if len(buf) < 2 + size:
                return
            message = bytes(buf[2:2 + size])
            del buf[:2 + size]
            if not self.answer(message):
                self.mismatched()


class StreamPool:
    """Up to MAX_CONNECTIONS connections to one upstream, opened as load needs, reconnected with backoff."""

    def __init__(self, addr: UpstreamUrl, ssl_context: ssl.SSLContext | None,
                 factory: Callable[["StreamPool"], Connection], ids: Callable[[], int]) -> None:
        self.addr = addr
        self.ids = ids  # unpredictable query IDs (upstream.IDS)
        self.ssl_context = ssl_context
        self.factory = factory
        self.connections: list[Connection] = []
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.closed = False
        self.connecting: set[asyncio.Task] = set()  # held here: the loop keeps only weak references

    def pick(self) -> Connection:
        """The least busy usable connection, or a new one when all are busy and the bound allows."""
        open_ = [c for c in self.connections if c.usable()]
        best = min(open_, key=lambda c: c.load, default=None)
        if best is not None and (best.load < SPREAD_AT or len(self.connections) >= MAX_CONNECTIONS):
            return best
        if len(self.connections) < MAX_CONNECTIONS and not self.closed:
            now = time.monotonic()
            if now >= self.retry_at:
                return self._open()
            if best is None:
                raise StreamError(f"{self.addr}: {self.last_error}; next attempt in {self.retry_at - now:.1f} s")
        if best is None:
            raise StreamError(f"{self.addr}: every connection has {MAX_INFLIGHT} queries in flight")
        return best

    def _open(self) -> Connection:
        conn = self.factory(self)
        self.connections.append(conn)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)
        return conn

    async def _connect(self, conn: Connection) -> None:
        try:
            await asyncio.wait_for(conn.open(self.ssl_context), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self._failed(conn, describe(exc))
            return
        if self.closed:
            conn.close()
        elif not conn.closed:  # not refused after the handshake (failed_after_connect)
            self.failures = 0

    def _failed(self, conn: Connection, reason: str) -> None:
        self.failures += 1
        self.retry_at = time.monotonic() + min(BACKOFF_MAX, BACKOFF_START * 2 ** (self.failures - 1))
        self.last_error = reason
        log.warning(f"upstream {self.addr}: cannot connect: {reason}")
        conn.closed = True
        if not conn.ready.done():
            conn.ready.set_exception(StreamError(f"{self.addr}: {reason}"))
        self.forget(conn)

    def failed_after_connect(self, conn: Connection, reason: str) -> None:
        """The peer refused the session after the handshake (e.g. no HTTP/2): a failed attempt too."""
        self._failed(conn, reason)
        conn.close()

    def forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)

    async def query(self, question: bytes, build: Callable[[int], bytes], exact: bool, budget: float) -> bytes:
        """The reply to build(qid) that matches ID and question; StreamError or asyncio.TimeoutError
        when there is none within budget."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        retried = False
        while True:
            conn = self.pick()
            if not conn.ready.done():
                conn.queued += 1
                try:
                    await asyncio.wait_for(asyncio.shield(conn.ready), deadline - loop.time())
                finally:
                    conn.queued -= 1
            conn.ready.result()  # the attempt's StreamError, if it failed
            if not conn.usable():
                raise StreamError(f"connection to {self.addr} closed")
            qid = self.ids()
            while qid in conn.waiting:
                qid = self.ids()
            reads = conn.reads
            fut = conn.send(qid, question, build(qid), exact)
            timer = loop.call_at(deadline, _expire, fut)  # a bare timer: wait_for's wrapping costs more per query
            try:
                return await fut
            except Untaken:
                if retried:
                    raise
                retried = True
            except asyncio.TimeoutError:
                if conn.reads == reads:  # nothing at all came back (peer gone without a FIN): reconnect next time
                    conn.abort()
                raise
            finally:
                timer.cancel()
                conn.done(qid)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()


def stream_pool(addr: UpstreamUrl, ca_file: str, ids: Callable[[], int], mismatched: Callable[[], None]) -> StreamPool:
    """The pool for a tcp://, tls://, https:// or quic:// upstream (the DoH and DoQ modules are imported only
    when one is configured)."""
    if addr.transport == "quic":
        from heimdall.doqupstream import Doq, client_configuration

        config = client_configuration(addr, ca_file)
        return StreamPool(addr, None, lambda pool: Doq(addr, pool.forget, pool.failed_after_connect, config), ids)
    if addr.transport == "https":
        from heimdall.dohupstream import Http2

        return StreamPool(addr, client_context(ca_file, "h2"),
                          lambda pool: Http2(addr, pool.forget, pool.failed_after_connect), ids)
    tls = client_context(ca_file, "dot") if addr.transport == "tls" else None
    return StreamPool(addr, tls, lambda pool: LengthPrefixed(addr, pool.forget, mismatched), ids)
