"""Stage 2: which messages the server answers at all, before any policy or cache.

Not a query (too short, QR set): dropped. An opcode other than QUERY: NOTIMP.
Malformed: FORMERR. EDNS version > 0: BADVERS (RFC 6891). Zone transfers and
classes other than IN/CH/ANY: REFUSED. Everything else is parsed into a Query
for the stages after this one.
"""

from __future__ import annotations

from heimdall import wire
from heimdall.counters import Counters
from heimdall.outcome import Answer, How
from heimdall.wire import Query, WireError


def screen(data: bytes, counters: Counters) -> Query | Answer | None:
    """The parsed query to go on with, an error Answer to send, or None to drop the message."""
    if len(data) < 12 or data[2] & wire.QR:
        counters.dropped += 1
        return None
    if data[2] & wire.OPCODE_MASK:
        counters.notimp += 1
        return Answer(wire.error_reply(data, wire.NOTIMP, question_end_or_none(data)), How.ERROR)
    try:
        q = wire.parse_query(data)
    except WireError:
        counters.formerr += 1
        return Answer(wire.error_reply(data, wire.FORMERR), How.ERROR)
    counters.by_qtype[q.qtype] = counters.by_qtype.get(q.qtype, 0) + 1
    if q.edns and q.edns_version > 0:
        return Answer(wire.error_reply(data, wire.BADVERS, q.qend, edns=True), How.ERROR)
    if q.qtype in (wire.TYPE_AXFR, wire.TYPE_IXFR) or q.qclass not in (1, 3, 255):
        counters.refused += 1
        return Answer(wire.error_reply(data, wire.REFUSED, q.qend, edns=q.edns), How.ERROR)
    return q


def question_end_or_none(data: bytes) -> int | None:
    """Where a single question ends, to echo it in an error reply; None when there is none to echo."""
    if data[4:6] != b"\x00\x01":
        return None
    try:
        return wire.question_end(data)
    except WireError:
        return None
