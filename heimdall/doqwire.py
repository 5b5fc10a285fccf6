"""DNS over QUIC (RFC 9250) as both sides speak it: ALPN, error codes, one message per stream, QUIC settings.

A client opens a bidirectional stream per query, sends the query with a
two-byte length prefix (as over TCP) and ends its side of the stream; the
server answers on the same stream and ends it. The Message ID is 0 both ways
(4.2.1): the stream says which query a reply answers. QUIC and its TLS 1.3 are
aioquic's (sans-IO); heimdall/doq.py (listener) and heimdall/doqupstream.py
(upstream) move its datagrams over the loop's UDP sockets.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from pathlib import Path

from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicHeader, QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder

ALPN = "doq"

# aioquic logs each connection's version, ALPN and close at INFO: a line per client connection
logging.getLogger("quic").setLevel(logging.WARNING)
# aioquic reads the trust anchors at each handshake; cryptography warns of every system CA with a negative serial
warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive")

# RFC 9250 4.3: application error codes on streams and connections
NO_ERROR = 0x0
INTERNAL_ERROR = 0x1
PROTOCOL_ERROR = 0x2
REQUEST_CANCELLED = 0x3
EXCESSIVE_LOAD = 0x4

MAX_MESSAGE = 2 + 65535  # the length prefix and the largest DNS message


def message(stream: bytes | bytearray) -> bytes | None:
    """The one DNS message a whole stream carries, or None when the stream is not exactly one."""
    if len(stream) < 2:
        return None
    size = int.from_bytes(stream[:2], "big")
    return bytes(stream[2:]) if len(stream) == 2 + size else None


def framed(msg: bytes) -> bytes:
    """`msg` ready for a stream: its length, and Message ID 0."""
    return len(msg).to_bytes(2, "big") + b"\0\0" + msg[2:]


def trust_anchors(ca_file: str) -> bytes:
    """The system's CAs plus `ca_file`, as one PEM bundle (aioquic takes one source of CAs)."""
    paths = ssl.get_default_verify_paths()
    system = next((Path(p) for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()), None)
    bundle = system.read_bytes() if system is not None else b""
    if ca_file:
        bundle += b"\n" + Path(ca_file).read_bytes()
    return bundle


def client_configuration(server_name: str, ca_file: str, idle_timeout: float) -> QuicConfiguration:
    """Verified QUIC: the certificate must chain to the system's CAs or `ca_file` and carry `server_name`."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name=server_name,
                               idle_timeout=idle_timeout, verify_mode=ssl.CERT_REQUIRED)
    config.load_verify_locations(cadata=trust_anchors(ca_file))
    return config


def server_configuration(cert_file: str, key_file: str, idle_timeout: float) -> QuicConfiguration:
    """The listener's side: our certificate, DoQ only (OSError or ValueError when the pair cannot be used)."""
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], idle_timeout=idle_timeout,
                               max_stream_data=MAX_MESSAGE)  # a stream carries one message
    config.load_cert_chain(cert_file, key_file)
    return config


def first_initial(data: bytes, cid_length: int, versions: list[int]) -> QuicHeader | None:
    """The header of `data` when it is a client's first Initial in a version we speak, else None."""
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=cid_length)
    except ValueError:
        return None
    if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
        return None
    return header if header.version in versions else None


def refusal(header: QuicHeader) -> bytes:
    """An Initial closing the connection `header` would open with CONNECTION_REFUSED (RFC 9000 10.2.3).

    Its keys come from the client's Destination Connection ID alone, so refusing
    costs no TLS work; it is smaller than the client's datagram, so a spoofed
    source gains nothing from it."""
    crypto = CryptoPair()
    assert header.version is not None  # an Initial always names its version
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    builder = QuicPacketBuilder(host_cid=header.destination_cid, peer_cid=header.source_cid, version=header.version,
                                is_client=False, max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE)
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY)
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)  # the frame type that caused it: none in particular
    buf.push_uint_var(0)  # no reason phrase
    datagrams, _ = builder.flush()
    return datagrams[0]
