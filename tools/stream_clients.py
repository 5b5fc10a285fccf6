"""Client connections of the load generator's stream transports: TCP, DNS over TLS, HTTPS and QUIC.

A connection is a non-blocking socket driven by the worker's epoll loop
(tools/stream_worker.py): `on_readable` / `on_writable` advance the connect,
the TLS handshake and the writes, and return the DNS messages that arrived.
TLS is the `ssl` module's non-blocking SSLSocket: the record layer runs in
C, so a query costs one SSL_write and a reply one SSL_read. The classes only
move bytes; counting and timing stay with the worker.

TCP and DoT frame each message with its two-byte length (RFC 7766, RFC 7858);
DoH (tools/doh_client.py) carries each one in an HTTP/2 stream, DoQ
(tools/doq_client.py) in a QUIC stream.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass

TRANSPORTS = ("udp", "tcp", "dot", "doh", "doq")
CONNECTING, HANDSHAKE, READY = range(3)
RECV_SIZE = 65536


class ConnectionLost(Exception):
    """The connection is gone; `handshake` when it never got through the TLS handshake (or the connect)."""

    def __init__(self, reason: str, handshake: bool = False, connect: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.handshake = handshake
        self.connect = connect


class SendFailed(Exception):
    """This query could not be queued on the connection (e.g. HTTP/2 stream limit reached)."""


@dataclass(frozen=True)
class StreamOptions:
    """How the generator's stream clients connect: transport, reuse and TLS trust."""

    transport: str = "udp"
    queries_per_connection: int = 0   # 0: persistent (a connection carries queries until the run ends)
    tls_server_name: str | None = None  # SNI and the name verified; None: the server address
    ca_file: str | None = None          # None: the system's trust store
    insecure: bool = False              # lab only: no certificate or name check

    @property
    def stream(self) -> bool:
        return self.transport != "udp"


def tls_context(opts: StreamOptions) -> ssl.SSLContext:
    """The client context: verification on unless `insecure`, ALPN "dot" or "h2"."""
    ctx = ssl.create_default_context(cafile=opts.ca_file)
    if opts.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if opts.transport == "doh" else ["dot"])
    return ctx


class TcpConnection:
    """DNS over TCP: connect, then length-prefixed messages both ways, pipelined."""

    def __init__(self, family: int, sockaddr: tuple, client: int) -> None:
        self.sock: socket.socket = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = self.sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise ConnectionLost(f"connect: {errno.errorcode.get(err, err)}", connect=True)
        self.fd = self.sock.fileno()
        self.client = client
        self.state = CONNECTING
        self.out = bytearray()
        self.inbuf = bytearray()
        self.queries = 0                  # queries sent on it
        self.outstanding: set[int] = set()  # keys of its unanswered queries
        self.retired = False              # its quota of queries is spent: close when answered
        self.polled_out = True            # registered for EPOLLOUT
        self.eof = False
        self.want_write = True            # the handshake waits to write (else to read)

    def wants_write(self) -> bool:
        if self.state == READY:
            return bool(self.out)
        return self.state == CONNECTING or self.want_write

    def send(self, msg: bytes) -> None:
        self.out += len(msg).to_bytes(2, "big")
        self.out += msg
        if self.state == READY:
            self.flush()

    def abandon(self, qid: int) -> None:
        """Hook: the query with this ID timed out (DoQ stops its stream; a TCP stream has none)."""

    def on_writable(self) -> None:
        if self.state == CONNECTING:
            self._connected()
        elif self.state == HANDSHAKE:
            self._handshake()
        else:
            self.flush()

    def on_readable(self) -> list[bytes]:
        if self.state == CONNECTING:
            self._connected()
            return []
        if self.state == HANDSHAKE:
            self._handshake()
            if self.state != READY:
                return []
        return self._messages(self._receive())

    def _connected(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise ConnectionLost(f"connect: {errno.errorcode.get(err, err)}", connect=True)
        self.state = HANDSHAKE
        self._start_session()

    def _start_session(self) -> None:
        self._ready()

    def _handshake(self) -> None:
        self._ready()

    def _ready(self) -> None:
        self.state = READY
        self.flush()

    def flush(self) -> None:
        if not self.out:
            return
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            raise ConnectionLost(f"send: {exc.strerror or exc}") from None
        del self.out[:n]

    def _receive(self) -> bytes:
        """Everything readable now; sets `eof` when the server closed."""
        chunks: list[bytes] = []
        recv = self.sock.recv
        while True:
            try:
                data = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as exc:
                if chunks:  # deliver what came before the reset, then report it
                    self.eof = True
                    break
                raise ConnectionLost(f"receive: {exc.strerror or exc}") from None
            if not data:
                self.eof = True
                break
            chunks.append(data)
        return b"".join(chunks)

    def _messages(self, data: bytes) -> list[bytes]:
        buf = self.inbuf
        buf += data
        out = []
        i, n = 0, len(buf)
        while n - i >= 2:
            size = buf[i] << 8 | buf[i + 1]
            if n - i - 2 < size:
                break
            out.append(bytes(buf[i + 2:i + 2 + size]))
            i += 2 + size
        if i:
            del buf[:i]
        return out

    def close(self) -> None:
        self.sock.close()


class TlsConnection(TcpConnection):
    """DNS over TLS: TCP framing inside a TLS session (ALPN "dot"), the handshake driven by epoll."""

    def __init__(self, family: int, sockaddr: tuple, client: int, ctx: ssl.SSLContext,
                 server_name: str | None) -> None:
        super().__init__(family, sockaddr, client)
        self.ctx = ctx
        self.server_name = server_name

    def _start_session(self) -> None:
        # the descriptor stays the same: the epoll registration carries over
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.server_name,
                                         do_handshake_on_connect=False)
        self._handshake()

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self.want_write = False
            return
        except ssl.SSLWantWriteError:
            self.want_write = True
            return
        except ssl.SSLCertVerificationError as exc:
            raise ConnectionLost(f"TLS handshake: {exc.verify_message}", handshake=True) from None
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionLost(f"TLS handshake: {getattr(exc, 'reason', None) or exc}", handshake=True) from None
        self._negotiated()
        self._ready()

    def _negotiated(self) -> None:
        """Hook for what the handshake agreed (DoH checks ALPN)."""
