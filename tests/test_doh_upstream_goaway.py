"""A DoH upstream that leaves (GOAWAY) with queries in flight: the queries it took are answered on
the old connection, the one it did not take is asked again at once on a new connection (it was
never worked on), the old connection closes once drained, and later queries use the new one.

The server is h2 (an independent HTTP/2 implementation) over asyncio TLS with the test's CA; its
first connection holds three queries, answers the first and sends GOAWAY naming the second as the
last it took; it answers the second when the test says. nginx sends such a GOAWAY after
`keepalive_requests`.
"""

from __future__ import annotations

import asyncio
import ssl
import struct

import dns.message
import dns.rrset
import h2.config
import h2.connection
import h2.events

from heimdall import wire
from heimdall.http2frame import GOAWAY, NO_ERROR, frame
from heimdall.streamupstream import stream_pool
from heimdall.upstreamurl import parse_upstream

NAME = "dns.heimdall.test"


def reply_to(query: bytes) -> bytes:
    msg = dns.message.from_wire(query)
    r = dns.message.make_response(msg)
    r.answer.append(dns.rrset.from_text(msg.question[0].name, 60, "IN", "A", "192.0.2.53"))
    return r.to_wire()


class LeavingServer(asyncio.Protocol):
    """One connection; the first holds three queries, then leaves as the module says."""

    connections: list["LeavingServer"] = []

    def __init__(self) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.bodies: dict[int, bytearray] = {}
        self.held: list[int] = []
        self.first = not LeavingServer.connections
        self.lost = asyncio.get_running_loop().create_future()
        LeavingServer.connections.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if self.first:
                    self.held.append(event.stream_id)
                else:
                    self.answer(event.stream_id)
        self.transport.write(self.h2.data_to_send())
        if self.first and len(self.held) == 3:
            first, second, _untaken = self.held
            self.answer(first)
            self.transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", second, NO_ERROR)))
            self.held = [second]

    def answer(self, sid: int) -> None:
        body = reply_to(bytes(self.bodies.pop(sid)))
        self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/dns-message"),
                                   ("content-length", str(len(body)))])
        self.h2.send_data(sid, body, end_stream=True)
        self.transport.write(self.h2.data_to_send())


def test_goaway_drains_the_connection_and_what_it_did_not_take_is_asked_again(pki):
    server_cert, _ = pki
    LeavingServer.connections.clear()

    async def run() -> None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(server_cert.cert), str(server_cert.key))
        tls.set_alpn_protocols(["h2"])
        server = await asyncio.get_running_loop().create_server(LeavingServer, "127.0.0.1", 0, ssl=tls)
        port = server.sockets[0].getsockname()[1]
        ids = iter(range(1, 1000))
        pool = stream_pool(parse_upstream(f"https://127.0.0.1:{port}/dns-query#{NAME}"), str(server_cert.ca),
                           lambda: next(ids), lambda: None)

        async def ask(name: str) -> bytes:
            question = dns.message.make_query(name, "A").to_wire()[12:]
            return await pool.query(question, lambda qid: wire.make_query(qid, True, False, question, False),
                                    False, 5.0)

        try:
            first, second, untaken = (asyncio.ensure_future(ask(f"q{i}.example.test")) for i in range(3))
            assert dns.message.from_wire(await first).answer
            assert dns.message.from_wire(await untaken).answer  # asked again, on a new connection
            assert len(LeavingServer.connections) == 2
            old = LeavingServer.connections[0]
            assert not second.done() and not old.lost.done()
            assert dns.message.from_wire(await ask("meanwhile.example.test")).answer  # on the new one too
            assert len(LeavingServer.connections) == 2
            old.answer(old.held.pop())
            assert dns.message.from_wire(await second).answer  # taken before the GOAWAY: answered there
            await asyncio.wait_for(old.lost, 5)  # drained: we closed it
            assert not LeavingServer.connections[1].lost.done()
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(run(), 30))

