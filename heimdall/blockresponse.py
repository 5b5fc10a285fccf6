"""Answers for blocked names, built from per-(mode, qtype) templates.

A blocked answer is the client's header ID and flags (opcode, RD, CD copied;
QR and RA set), its question exactly as sent (0x20 case kept), then a tail of
records that only depends on the mode, the qtype class (A, AAAA, other) and
whether the query carried EDNS. The tails are built once; a response is four
byte-string concatenations. Owner names in the tail are compression pointers
to the question (offset 12).

Modes (HEIMDALL_BLOCKING_MODE):

* ``zero_ip`` (default): A -> 0.0.0.0, AAAA -> ::, other types NODATA + SOA.
* ``nxdomain``: NXDOMAIN with an SOA in authority so clients cache the denial.
* ``refused``: REFUSED, question only.
* ``custom_ip``: A/AAAA from HEIMDALL_BLOCKING_CUSTOM_IP (v4 and/or v6); a
  type with no configured address gets NODATA + SOA.

Negative answers carry SOA ``<qname> IN SOA heimdall.blocked. hostmaster.heimdall.blocked.``
with TTL and minimum both equal to the block TTL (RFC 2308 negative TTL).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

MODES = ("zero_ip", "nxdomain", "refused", "custom_ip")
TYPE_A, TYPE_AAAA, TYPE_OPT = 1, 28, 41
RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED = 0, 3, 5
EDNS_PAYLOAD = 1232

_PTR_QNAME = b"\xc0\x0c"
_MNAME = b"\x08heimdall\x07blocked\x00"
_RNAME = b"\x0ahostmaster\x08heimdall\x07blocked\x00"


class BlockResponseError(ValueError):
    """Bad blocking configuration (unknown mode, unusable custom IP)."""


@dataclass(frozen=True)
class _Template:
    rcode: int
    counts: bytes  # QD, AN, NS, AR counts (8 bytes)
    tail: bytes    # answer + authority + additional records


def _rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
    return _PTR_QNAME + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def _soa(ttl: int) -> bytes:
    rdata = _MNAME + _RNAME + struct.pack("!IIIII", 1, 1800, 900, 604800, ttl)
    return _rr(6, ttl, rdata)


_OPT = b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, 0, 0)
# _FLAGS[query byte 2 & (opcode|RD)][CD | rcode] -> response flag bytes (QR and RA set)
_FLAGS = [[bytes((b2 | 0x80, b3 | 0x80)) for b3 in range(32)] for b2 in range(128)]


def parse_custom_ips(value: str) -> tuple[bytes | None, bytes | None]:
    """"1.2.3.4", "::1" or "1.2.3.4,::1" -> (4-byte v4 or None, 16-byte v6 or None)."""
    v4 = v6 = None
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            ip = ipaddress.ip_address(part)
        except ValueError as e:
            raise BlockResponseError(f"HEIMDALL_BLOCKING_CUSTOM_IP: {part!r} is not an IP address") from e
        if ip.version == 4:
            v4 = ip.packed
        else:
            v6 = ip.packed
    if v4 is None and v6 is None:
        raise BlockResponseError("custom_ip mode needs HEIMDALL_BLOCKING_CUSTOM_IP (an IPv4 and/or IPv6 address)")
    return v4, v6


def question_end(query: bytes) -> int:
    """Offset just past the single question (name, type, class), or -1 if malformed."""
    if len(query) < 17 or query[4:6] != b"\x00\x01":
        return -1
    i = 12
    n = len(query)
    while i < n:
        length = query[i]
        if length == 0:
            end = i + 5
            return end if end <= n else -1
        if length > 63:
            return -1  # compression pointers or reserved label types in a question
        i += length + 1
    return -1


class BlockResponder:
    """Builds blocked answers for one mode and TTL."""

    def __init__(self, mode: str = "zero_ip", ttl: int = 300, custom_ip: str = "") -> None:
        if mode not in MODES:
            raise BlockResponseError(f"HEIMDALL_BLOCKING_MODE must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.ttl = ttl
        v4, v6 = parse_custom_ips(custom_ip) if mode == "custom_ip" else (None, None)
        if mode == "zero_ip":
            v4, v6 = bytes(4), bytes(16)
        # index: 0 other, 1 A, 2 AAAA; +3 with EDNS
        self._by_index: list[_Template] = [
            self._build(rtype, addr, edns) for edns in (False, True)
            for rtype, addr in ((0, None), (TYPE_A, v4), (TYPE_AAAA, v6))]

    def _build(self, rtype: int, addr: bytes | None, edns: bool) -> _Template:
        an = ns = b""
        n_an = n_ns = 0
        if self.mode == "refused":
            rcode = RCODE_REFUSED
        elif self.mode == "nxdomain":
            rcode, ns, n_ns = RCODE_NXDOMAIN, _soa(self.ttl), 1
        elif addr is not None:
            rcode, an, n_an = RCODE_NOERROR, _rr(rtype, self.ttl, addr), 1
        else:
            rcode, ns, n_ns = RCODE_NOERROR, _soa(self.ttl), 1
        ar = _OPT if edns else b""
        counts = struct.pack("!HHHH", 1, n_an, n_ns, 1 if edns else 0)
        return _Template(rcode, counts, an + ns + ar)

    def respond(self, query: bytes, qend: int = -1) -> bytes | None:
        """Response bytes for a blocked query, or None if the query is malformed.

        `qend` is the offset just past the question if the caller already knows it.
        """
        if qend < 0:
            qend = question_end(query)
            if qend < 0:
                return None
        qtype = (query[qend - 4] << 8) | query[qend - 3]
        edns = 3 if (query[11] or query[10]) and query[qend:qend + 3] == b"\x00\x00\x29" else 0
        t = self._by_index[edns + (1 if qtype == TYPE_A else 2 if qtype == TYPE_AAAA else 0)]
        return b"".join((query[:2], _FLAGS[query[2] & 0x79][query[3] & 0x10 | t.rcode], t.counts,
                          query[12:qend], t.tail))
