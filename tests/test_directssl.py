"""heimdall/directssl.py: TLS objects whose per-record methods are the ssl module's C methods.

They must do exactly what the standard SSLObject does, under uvloop (the
server's loop) and under asyncio's own TLS layer: a handshake, records both
ways, reads into a buffer, what is pending, and a verified name.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
import uvloop

from heimdall.directssl import DirectSSLObject
from heimdall.streamupstream import client_context
from heimdall.tls import ALPN, server_context
from heimdall.transport import Transport
from tools.testpki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    cert, other_ca = make_pki(tmp_path_factory.mktemp("pki"))
    return cert, other_ca


def server_ctx(cert) -> ssl.SSLContext:
    class Config:
        tls_cert_file, tls_key_file = str(cert.cert), str(cert.key)
    return server_context(Config(), ALPN[Transport.DOT])  # type: ignore[arg-type]


def pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    dst.write(src.read())


def test_records_go_both_ways_through_memory(pki):
    """A handshake and records over memory BIOs, as the event loop drives them."""
    cert, _ = pki
    client_ctx, srv_ctx = client_context(str(cert.ca), "dot"), server_ctx(cert)
    assert client_ctx.sslobject_class is DirectSSLObject and srv_ctx.sslobject_class is DirectSSLObject
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=cert.name)
    server = srv_ctx.wrap_bio(s_in, s_out, server_side=True)
    assert isinstance(client, DirectSSLObject)
    assert client.read.__self__ is client._sslobj  # the C method itself, no Python call around it
    for _ in range(4):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        pump(c_out, s_in)
        pump(s_out, c_in)
    assert client.selected_alpn_protocol() == "dot"
    assert client.write(b"\x00\x05query") == 7
    pump(c_out, s_in)
    buf = bytearray(4)
    assert server.read(4, buf) == 4 and bytes(buf) == b"\x00\x05qu"
    assert server.pending() == 3
    assert server.read(1024) == b"ery"
    with pytest.raises(ssl.SSLWantReadError):
        server.read(1024)
    server.write(b"reply")
    pump(s_out, c_in)
    assert client.read(1024) == b"reply"


async def echo_round_trip(cert, server_name: str) -> bytes:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx(cert))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(str(cert.ca), "dot"),
                                                       server_hostname=server_name)
        writer.write(b"hello")
        data = await reader.readexactly(5)
        writer.close()
        return data
    finally:
        server.close()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_connection_under_each_loop(pki, loop_factory):
    cert, _ = pki
    loop = loop_factory()
    try:
        assert loop.run_until_complete(echo_round_trip(cert, cert.name)) == b"hello"
        with pytest.raises(ssl.SSLCertVerificationError):  # the name is still checked
            loop.run_until_complete(echo_round_trip(cert, "other.heimdall.test"))
    finally:
        loop.close()
