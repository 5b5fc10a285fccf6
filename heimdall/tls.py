"""The encrypted listeners of one worker: DNS over TLS, HTTPS and QUIC, and their certificate.

Both are TCP sockets bound like the plain TCP one (SO_REUSEPORT with N
workers), served with the standard library's TLS under asyncio. DoT is the TCP
listener's own protocol inside TLS (RFC 7858 keeps TCP's length-prefixed
framing); DoH is heimdall/doh.py's. Each has a TcpListener of its own, so the
connection limits and the idle timeout of HEIMDALL_TCP_* hold for it, counted
apart from plain TCP. A TLS handshake must finish within the idle timeout.
DoQ is a UDP socket served by heimdall/doq.py, imported only when it is on.

SIGHUP re-reads the certificate and key into the live contexts, which new
connections use. A pair that does not load is tried on a scratch context
first, so a failed reload keeps serving the old certificate and logs why.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from heimdall.config import Config
from heimdall.directssl import DirectSSLObject
from heimdall.doh import DohConnection
from heimdall.pipeline import Pipeline
from heimdall.tcp import TcpConnection, TcpListener, TlsConnection
from heimdall.transport import Transport

if TYPE_CHECKING:
    from heimdall.doq import DoqListener

log = logging.getLogger("heimdall.tls")

ALPN = {Transport.DOT: ["dot"], Transport.DOH: ["h2", "http/1.1"]}


class TlsError(Exception):
    """The certificate or key cannot be used; str() is the one-line reason."""


def server_context(config: Config, alpn: list[str]) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the configured certificate, offering `alpn`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(alpn)
    ctx.sslobject_class = DirectSSLObject
    load_certificate(ctx, config)
    return ctx


def load_certificate(ctx: ssl.SSLContext, config: Config) -> None:
    cert, key = config.tls_cert_file, config.tls_key_file
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one too
        raise TlsError(f"cannot load the TLS certificate {cert} with key {key}: {why(exc)}") from None


def why(exc: OSError) -> str:
    if not isinstance(exc, ssl.SSLError):
        return exc.strerror or str(exc)
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    if exc.reason in (None, "PEM_LIB", "NO_START_LINE"):
        return "not a PEM certificate chain and private key"
    return str(exc.reason)


def check_certificate(config: Config) -> None:
    """At start, before any worker: TlsError when the encrypted listeners could not use the certificate."""
    if config.tls_bind_addr is not None or config.https_bind_addr is not None or config.quic_bind_addr is not None:
        server_context(config, [])
    if config.quic_bind_addr is not None:
        from heimdall.doq import DoqListener

        DoqListener.configuration(config)


@dataclass
class TlsSockets:
    """The bound sockets of the encrypted listeners (None: that listener is off)."""

    dot: socket.socket | None = None
    doh: socket.socket | None = None
    doq: socket.socket | None = None  # UDP

    def items(self) -> list[tuple[Transport, socket.socket]]:
        pairs = ((Transport.DOT, self.dot), (Transport.DOH, self.doh), (Transport.DOQ, self.doq))
        return [(t, s) for t, s in pairs if s is not None]

    def close(self) -> None:
        for _, sock in self.items():
            sock.close()


@dataclass
class TlsListeners:
    """One worker's DoT, DoH and DoQ servers, their connections and their SSL contexts."""

    config: Config
    pipeline: Pipeline
    sockets: TlsSockets
    listeners: dict[Transport, TcpListener] = field(default_factory=dict)
    contexts: list[ssl.SSLContext] = field(default_factory=list)
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    doq: "DoqListener | None" = None

    async def start(self) -> None:
        """Serve every bound socket (TlsError when the certificate cannot be loaded)."""
        loop = asyncio.get_running_loop()
        for transport, sock in self.sockets.items():
            if transport is Transport.DOQ:
                await self.start_doq(sock)
                continue
            ctx = server_context(self.config, ALPN[transport])
            listener = TcpListener(self.pipeline, self.config, transport)
            kind = DohConnection if transport is Transport.DOH else TlsConnection

            def factory(listener: TcpListener = listener, kind: type[TcpConnection] = kind) -> TcpConnection:
                return kind(listener)

            self.servers.append(await loop.create_server(factory, sock=sock, ssl=ctx,
                                                         ssl_handshake_timeout=self.config.tcp_idle_timeout))
            self.listeners[transport] = listener
            self.contexts.append(ctx)

    async def start_doq(self, sock: socket.socket) -> None:
        from heimdall.doq import DoqListener

        self.doq = DoqListener(self.config, self.pipeline, sock)
        await self.doq.start()

    def reload_certificate(self) -> None:
        """SIGHUP: new connections get the certificate as the files hold it now, if it loads."""
        if not self.contexts and self.doq is None:
            return
        try:
            server_context(self.config, [])
            quic = self.doq.configuration(self.config) if self.doq is not None else None
            for ctx in self.contexts:
                load_certificate(ctx, self.config)
            if self.doq is not None and quic is not None:
                self.doq.use_certificate(quic)
        except TlsError as exc:
            log.error(f"{exc}: keeping the certificate loaded before")
            return
        log.info(f"TLS certificate reloaded from {self.config.tls_cert_file}")

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        if self.doq is not None:
            self.doq.stop_accepting()

    def busy(self) -> bool:
        return any(listener.busy() for listener in self.listeners.values()) or (self.doq is not None and self.doq.busy())

    def close_all(self) -> None:
        for listener in self.listeners.values():
            listener.close_all()
        if self.doq is not None:
            self.doq.close_all()
