"""Stage 3 (policy): qtype ANY without amplification (RFC 8482), HEIMDALL_ANY_MODE.

ANY is the classic reflection-amplification query: a 40-byte question that
makes a server send kilobytes at a spoofed victim. Modes:

- minimal (default): answer at once, without asking upstream, with one
  synthesised HINFO record, CPU "RFC8482", OS "" (RFC 8482 section 4.2), TTL
  3600; the reply is the question plus ~30 bytes.
- refused: REFUSED (the question echoed, nothing else).
- forward: treat ANY like any other type (asked upstream, cached, TC=1 when
  it does not fit the client's UDP size).
"""

from __future__ import annotations

import struct

from heimdall import wire
from heimdall.counters import Counters
from heimdall.outcome import Answer, How
from heimdall.wire import Query

TYPE_ANY = 255
TYPE_HINFO = 13
HINFO_TTL = 3600
_HINFO_RDATA = b"\x07RFC8482\x00"


def reply(data: bytes, q: Query, mode: str) -> bytes:
    """The reply to an ANY query in `mode` ("minimal" or "refused")."""
    if mode == "refused":
        return wire.error_reply(data, wire.REFUSED, q.qend, edns=q.edns)
    b2 = wire.QR | (data[2] & wire.RD)
    b3 = wire.RA | (data[3] & wire.CD)
    rclass = 1 if q.qclass == TYPE_ANY else q.qclass
    rr = b"\xc0\x0c" + struct.pack("!HHIH", TYPE_HINFO, rclass, HINFO_TTL, len(_HINFO_RDATA)) + _HINFO_RDATA
    opt = wire.opt_record(wire.OUR_UDP_SIZE, q.do) if q.edns else b""
    return (data[:2] + bytes((b2, b3)) + struct.pack("!HHHH", 1, 1, 0, 1 if q.edns else 0)
            + data[wire.HEADER_LEN:q.qend] + rr + opt)


class AnyQuery:
    """The policy stage for ANY in "minimal" or "refused" mode ("forward" installs none)."""

    def __init__(self, mode: str, counters: Counters):
        self.mode = mode
        self.counters = counters

    def check(self, data: bytes, q: Query) -> Answer | None:
        if q.qtype != TYPE_ANY:
            return None
        if self.mode == "refused":
            self.counters.refused += 1
            return Answer(reply(data, q, self.mode), How.ERROR)
        return Answer(reply(data, q, self.mode), How.LOCAL)
