"""Local records as data: what the hosts files and the entries say, checked and in wire form.

Two sources, both optional:

* HEIMDALL_LOCAL_RECORDS: hosts-format files, `IP name [alias...]` per line,
  `#` comments; IPv4 and IPv6. Each name gets an A or AAAA record.
* HEIMDALL_LOCAL_ENTRIES: records `name TYPE data` (types in TYPES), e.g.
  `www.lan CNAME printer.lan`, `info.lan TXT "hello world"`. In the
  environment they are a comma list; a comma inside double quotes (TXT) is
  part of the record.

Every A and AAAA also gets its PTR (`50.2.0.192.in-addr.arpa PTR printer.lan`,
ip6.arpa for IPv6) unless an entry gives that reverse name a PTR itself.
Only those reverse names become local: other addresses of the same network
are still forwarded. Names are compared in lower case. A name with a CNAME
may have no other record (RFC 1034 3.6.2).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

TYPES = {"A": 1, "AAAA": 28, "CNAME": 5, "TXT": 16, "PTR": 12, "MX": 15, "SRV": 33}
A, AAAA, CNAME, PTR = 1, 28, 5, 12


class LocalDataError(ValueError):
    """A record or file that cannot be served; str() names where (FILE:LINE or the entry)."""


@dataclass(frozen=True)
class LocalData:
    """name (lower case, no trailing dot) -> type -> rdata in wire form (names uncompressed), in order."""

    records: dict[str, dict[int, list[bytes]]] = field(default_factory=dict)
    zones: tuple[str, ...] = ()
    ttl: int = 60

    @property
    def empty(self) -> bool:
        return not self.records and not self.zones


def split_entries(text: str) -> list[str]:
    """The comma list of entries; commas inside double quotes belong to the entry (TXT data)."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for c in text:
        if c == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(c)
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def wire_bytes(value: bytes | None) -> bytes:
    """dnspython's to_wire() without a file: always bytes (its type says bytes | None)."""
    assert value is not None
    return value


def owner_name(text: str) -> str:
    """A record's name: lower case, no trailing dot; LocalDataError when it is no DNS name."""
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise LocalDataError(f"{text!r} is not a domain name: {exc}") from None
    if name == dns.name.root:
        raise LocalDataError("the root cannot have local records")
    return name.to_text(omit_final_dot=True).lower()


def parse_entry(text: str) -> tuple[str, int, bytes]:
    """'name TYPE data' -> (name, type, rdata in wire form)."""
    parts = text.split(None, 2)
    if len(parts) < 3:
        raise LocalDataError(f"{text!r} is not 'name TYPE data' (e.g. 'printer.lan A 192.0.2.50')")
    name, kind, data = parts[0], parts[1].upper(), parts[2]
    if kind not in TYPES:
        raise LocalDataError(f"{text!r}: type {parts[1]!r} is not one of {', '.join(TYPES)}")
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, data, origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError) as exc:
        raise LocalDataError(f"{text!r}: {exc}") from None
    return owner_name(name), TYPES[kind], wire_bytes(rdata.to_wire())


def parse_entries(text: str) -> tuple[str, ...]:
    """The HEIMDALL_LOCAL_ENTRIES setting: each entry checked, kept as written."""
    entries = tuple(split_entries(text))
    for entry in entries:
        try:
            parse_entry(entry)
        except LocalDataError as exc:
            raise ValueError(str(exc)) from None
    return entries


def read_hosts(path: str) -> list[tuple[str, int, bytes]]:
    """A hosts file's A/AAAA records; LocalDataError naming FILE:LINE for a bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalDataError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) < 2:
            raise LocalDataError(f"{path}:{number}: {line.strip()!r} has an address but no name")
        try:
            ip = ipaddress.ip_address(words[0].split("%", 1)[0])
            names = [owner_name(w) for w in words[1:]]
        except (ValueError, LocalDataError) as exc:
            raise LocalDataError(f"{path}:{number}: {exc}") from None
        records += [(name, A if ip.version == 4 else AAAA, ip.packed) for name in names]
    return records


def ptr_records(records: list[tuple[str, int, bytes]]) -> list[tuple[str, int, bytes]]:
    """The PTR of every A and AAAA: reverse name -> the name, every name an address has."""
    out = []
    for name, rtype, rdata in records:
        if rtype in (A, AAAA):
            reverse = ipaddress.ip_address(rdata).reverse_pointer
            out.append((reverse, PTR, wire_bytes(dns.name.from_text(name).to_wire())))
    return out


def load(files: tuple[str, ...], entries: tuple[str, ...], zones: tuple[str, ...], ttl: int) -> LocalData:
    """Read the files and entries into the table; LocalDataError on the first problem."""
    records: list[tuple[str, int, bytes]] = []
    for path in files:
        records += read_hosts(path)
    explicit = [parse_entry(entry) for entry in entries]
    explicit_ptr = {name for name, rtype, _ in explicit if rtype == PTR}
    generated = [r for r in ptr_records(records + explicit) if r[0] not in explicit_ptr]
    return build_table(records + explicit + generated, zones, ttl)


def build_table(records: list[tuple[str, int, bytes]], zones: tuple[str, ...], ttl: int) -> LocalData:
    """Records (PTRs included) into the table; duplicates dropped, CNAMEs alone at their name."""
    table: dict[str, dict[int, list[bytes]]] = {}
    for name, rtype, rdata in records:
        rdatas = table.setdefault(name, {}).setdefault(rtype, [])
        if rdata not in rdatas:
            rdatas.append(rdata)
    for name, rrsets in table.items():
        if CNAME in rrsets and len(rrsets) > 1:
            others = ", ".join(dns.rdatatype.to_text(dns.rdatatype.RdataType(t)) for t in rrsets if t != CNAME)
            raise LocalDataError(f"{name} has a CNAME and other records ({others}): a CNAME must be alone")
        if len(rrsets.get(CNAME, ())) > 1:
            raise LocalDataError(f"{name} has more than one CNAME")
    return LocalData(table, zones, ttl)
