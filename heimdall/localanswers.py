"""Authoritative answers for local records, built once per load as byte templates.

Like blocked answers (heimdall/blockresponse.py), a local answer is the
client's ID and flags, its question as sent (0x20 case kept), then a tail
that depends only on the name and the qtype: built when the records load,
so answering is a dict lookup and a join. The first owner name in a tail is a
compression pointer to the question; the names a CNAME leads to are written
out in full. Flags: QR, AA and RA set; opcode, RD and CD copied.

What a name gets (RFC 1034 4.3.2, RFC 2308, RFC 8020):

* it has records of the type: those records;
* it has a CNAME: the CNAME, then the target's answer when the target is
  local, followed for up to MAX_CHAIN links (else the CNAME alone: the
  client's resolver follows it);
* it exists without that type (another type, an empty non-terminal below a
  local zone, a zone apex): NODATA, NOERROR with the SOA in authority;
* it is under a local zone and does not exist: NXDOMAIN with the SOA;
* qtype ANY: every record of the name (as many rrsets as fit 512 bytes);
* anything else is not local: the query goes on to blocking and the cache.

The SOA of a negative answer is the enclosing local zone's, or for a name
outside every zone the name's own, `<zone> SOA <zone> hostmaster.<zone>`
with TTL and minimum both the local TTL, so negative caching lasts as long
as a positive answer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.name
import dns.rdatatype

from heimdall.localdata import CNAME, LocalData, LocalDataError, wire_bytes

SOA, ANY, OTHER = 6, 255, 0  # OTHER: the template for every qtype the name has no template for
NOERROR, NXDOMAIN = 0, 3
MAX_CHAIN = 8
UDP_LIMIT = 512 - 11  # a reply must fit 512 bytes with room for an OPT record
_QNAME = b"\xc0\x0c"
_OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)


@dataclass(frozen=True)
class Template:
    rcode: int
    counts: bytes  # QD, AN, NS, AR without EDNS
    counts_edns: bytes
    tail: bytes  # answer + authority records


def wire(name: str) -> bytes:
    return wire_bytes(dns.name.from_text(name).to_wire())


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def soa(zone: str, ttl: int) -> bytes:
    apex = wire(zone)
    rdata = apex + wire("hostmaster." + zone) + struct.pack("!IIIII", 1, 3600, 600, 86400, ttl)
    return rr(apex, SOA, ttl, rdata)


def template(rcode: int, answers: list[bytes], authority: list[bytes]) -> Template:
    an, ns = len(answers), len(authority)
    return Template(rcode, struct.pack("!HHHH", 1, an, ns, 0), struct.pack("!HHHH", 1, an, ns, 1),
                    b"".join(answers + authority))


class Builder:
    """The templates of one LocalData: every existing name, every type it can be asked for."""

    def __init__(self, data: LocalData):
        self.data = data
        self.ttl = data.ttl
        self.zones = set(data.zones)
        self.exists: dict[str, dict[int, list[bytes]]] = {z: {SOA: [soa(z, self.ttl)[len(wire(z)) + 10:]]}
                                                           for z in data.zones}
        for name, rrsets in data.records.items():
            self.exists.setdefault(name, {}).update(rrsets)
            for parent in self.parents_in_zone(name):
                self.exists.setdefault(parent, {})
        self.qtypes = sorted({t for rrsets in self.exists.values() for t in rrsets} | {CNAME, SOA, ANY, OTHER})

    def zone_of(self, name: str) -> str | None:
        """The longest local zone `name` is in (or is), else None."""
        labels = name.split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            if suffix in self.zones:
                return suffix
        return None

    def parents_in_zone(self, name: str) -> list[str]:
        """The names between `name` and its zone apex (empty non-terminals when they have no records)."""
        zone = self.zone_of(name)
        if zone is None:
            return []
        labels = name.split(".")
        parents = [".".join(labels[i:]) for i in range(1, len(labels))]
        return [p for p in parents if p.endswith("." + zone)]

    def answer(self, name: str, qtype: int) -> Template:
        answers: list[bytes] = []
        owner, current = _QNAME, name
        for _ in range(MAX_CHAIN):
            rrsets = self.exists.get(current)
            if rrsets is None:
                zone = self.zone_of(current)
                if zone is None:  # a CNAME out of the local data
                    return template(NOERROR, answers, [])
                return template(NXDOMAIN, answers, [soa(zone, self.ttl)])
            if qtype == ANY and rrsets:
                return template(NOERROR, answers + self.fitting(owner, rrsets, name), [])
            if qtype in rrsets:
                return template(NOERROR, answers + [rr(owner, qtype, self.ttl, r) for r in rrsets[qtype]], [])
            if CNAME in rrsets:
                target = rrsets[CNAME][0]
                answers.append(rr(owner, CNAME, self.ttl, target))
                owner, current = target.lower(), dns.name.from_wire(target, 0)[0].to_text(True).lower()
                continue
            return template(NOERROR, answers, [soa(self.zone_of(current) or current, self.ttl)])
        return template(NOERROR, answers, [])

    def fitting(self, owner: bytes, rrsets: dict[int, list[bytes]], name: str) -> list[bytes]:
        """Every record of the name for ANY, as many whole rrsets as fit a UDP reply (at least one)."""
        out: list[bytes] = []
        room = UDP_LIMIT - 12 - len(wire(name)) - 4
        for rtype, rdatas in rrsets.items():
            records = [rr(owner, rtype, self.ttl, r) for r in rdatas]
            if out and sum(map(len, out + records)) > room:
                break
            out += records
        return out

    def build(self) -> tuple[dict[bytes, dict[int, Template]], dict[bytes, Template]]:
        """(wire name -> qtype -> template, wire zone -> NXDOMAIN template); LocalDataError if one is too big."""
        names: dict[bytes, dict[int, Template]] = {}
        for name in self.exists:
            by_type = {qtype: self.answer(name, qtype) for qtype in self.qtypes}
            names[wire(name)] = by_type
            for qtype, t in by_type.items():
                if 12 + len(wire(name)) + 4 + len(t.tail) > UDP_LIMIT:
                    kind = dns.rdatatype.to_text(dns.rdatatype.RdataType(qtype)) if qtype else "other"
                    raise LocalDataError(f"{name} {kind}: the answer does not fit a 512-byte UDP reply")
        nx = {wire(z): template(NXDOMAIN, [], [soa(z, self.ttl)]) for z in self.zones}
        return names, nx


def render(data: bytes, qend: int, t: Template) -> bytes:
    """The reply to `data` from a template: the client's ID, flags and question, then the tail."""
    edns = (data[10] or data[11]) and data[qend:qend + 3] == b"\x00\x00\x29"
    flags = bytes(((data[2] & 0x79) | 0x84, 0x80 | (data[3] & 0x10) | t.rcode))
    if edns:
        return b"".join((data[:2], flags, t.counts_edns, data[12:qend], t.tail, _OPT))
    return b"".join((data[:2], flags, t.counts, data[12:qend], t.tail))
