"""Conditional forwarding: queries under a zone go to that zone's own upstreams.

HEIMDALL_FORWARD_ZONES is a comma list of `zone=upstream`, several upstreams
of one zone separated by `|`: `lan=192.168.1.1:53,corp.example=10.0.0.53|10.0.0.54:53`
(port 53 when omitted; tcp://, tls:// and https:// upstreams as in HEIMDALL_UPSTREAM_SERVERS). Reverse zones are zones like any other
(`1.168.192.in-addr.arpa=192.168.1.1`). The longest zone that is a suffix of
the query name wins. Each zone has its own UpstreamPool, so its own health,
backoff and failover; a query under a zone never goes to the default
upstreams, even when every upstream of its zone is down (SERVFAIL then):
internal names do not leak.

`ZoneRouter` stands in for stage 6 only when zones are configured; without
them the pipeline holds the default `Forward` itself, so nothing is added to
any query's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from heimdall import wire
from heimdall.config import Config, HostPort
from heimdall.forward import Forward
from heimdall.outcome import Fetched, Miss
from heimdall.upstream import UpstreamPool
from heimdall.upstreamurl import parse_upstream_list


@dataclass(frozen=True)
class ForwardZone:
    name: str  # lower case, no trailing dot
    upstreams: tuple[HostPort, ...]

    def __str__(self) -> str:
        return f"{self.name}={'|'.join(map(str, self.upstreams))}"


def zone_name(text: str) -> str:
    """A zone as the setting writes it: lower case, no trailing dot; ValueError if it is no DNS name."""
    name = text.strip().lower().rstrip(".")
    if not name:
        raise ValueError("the root zone is the default upstreams' (HEIMDALL_UPSTREAM_SERVERS), not a forward zone")
    labels = name.split(".")
    if any(not 0 < len(label) < 64 for label in labels) or len(name) > 253:
        raise ValueError(f"{text.strip()!r} is not a domain name")
    if not name.isascii() or any(c.isspace() or c in "=|,\"\\" for c in name):
        raise ValueError(f"{text.strip()!r} is not a domain name")
    return name


def parse_zone_list(text: str) -> tuple[str, ...]:
    """HEIMDALL_LOCAL_ZONES: a comma list of zones, each once."""
    return tuple(dict.fromkeys(zone_name(t) for t in text.split(",") if t.strip()))


def parse_zone_upstreams(text: str) -> tuple[HostPort, ...]:
    """`a|b|c` (or one upstream): the zone's upstreams, each as HEIMDALL_UPSTREAM_SERVERS writes one."""
    addrs = parse_upstream_list(text, sep="|")
    if not addrs:
        raise ValueError("a zone needs at least one upstream host:port")
    return addrs


def parse_forward_zones(text: str) -> tuple[ForwardZone, ...]:
    """`zone=addr|addr,zone=addr` -> zones; a zone given twice is an error (which one would win?)."""
    zones: dict[str, ForwardZone] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        zone, eq, addrs = item.partition("=")
        if not eq:
            raise ValueError(f"{item!r} is not zone=host:port (e.g. lan=192.168.1.1:53)")
        name = zone_name(zone)
        if name in zones:
            raise ValueError(f"zone {name!r} is given twice")
        try:
            zones[name] = ForwardZone(name, parse_zone_upstreams(addrs))
        except ValueError as exc:
            raise ValueError(f"zone {name!r}: {exc}") from None
    return tuple(zones.values())


def wire_name(name: str) -> bytes:
    """'corp.example' -> b'\\x04corp\\x07example\\x00' (the form of a Miss's lower-cased question)."""
    return b"".join(bytes((len(label),)) + label.encode("ascii", "replace") for label in name.split(".")) + b"\x00"


class ZoneRouter:
    """Stage 6 with zones: the Forward of the longest zone the name is under, else the default one."""

    def __init__(self, default: Forward, zones: dict[bytes, Forward]):
        self.default = default
        self.zones = zones

    def route(self, name: bytes) -> Forward:
        """The Forward for a lower-cased wire name: one dict lookup per label, longest suffix first."""
        forward = wire.longest_suffix(self.zones, name)
        return self.default if forward is None else forward

    def fetch(self, miss: Miss, data: bytes) -> Awaitable[Fetched | None]:
        return self.route(miss.question[:-4]).fetch(miss, data)


@dataclass
class Forwarding:
    """Stage 6 as configured: the default upstreams' pool, one pool per zone, and the stage itself."""

    pool: UpstreamPool
    zone_pools: dict[str, UpstreamPool]
    stage: Forward | ZoneRouter

    @classmethod
    def build(cls, config: Config, reuse: "Forwarding | None" = None) -> "Forwarding":
        """The pools `config` names; a pool whose upstreams did not change is `reuse`'s own, so it
        keeps its sockets, health and backoff across a SIGHUP."""
        def pool(addrs: tuple[HostPort, ...], zone: str, old: UpstreamPool | None) -> UpstreamPool:
            if old is not None and tuple(u.addr for u in old.servers) == addrs and old.ca_file == config.upstream_ca_file:
                return old
            fresh = UpstreamPool.from_config(addrs, config.upstream_timeout, zone=zone, ca_file=config.upstream_ca_file)
            fresh.use_0x20 = config.use_0x20
            fresh.observe = old.observe if old is not None else (reuse.pool.observe if reuse else None)
            return fresh

        old_zones = reuse.zone_pools if reuse is not None else {}
        default = pool(config.upstream_servers, "", reuse.pool if reuse is not None else None)
        zones = {z.name: pool(z.upstreams, z.name, old_zones.get(z.name)) for z in config.forward_zones}
        forward = Forward(default, config)
        stage = ZoneRouter(forward, {wire_name(n): Forward(p, config) for n, p in zones.items()}) if zones else forward
        return cls(default, zones, stage)

    @property
    def pools(self) -> list[UpstreamPool]:
        return [self.pool, *self.zone_pools.values()]

    def changed_zones(self, other: "Forwarding") -> set[str]:
        """Zones added, removed or sent elsewhere between `other` and this."""
        return {z for z in self.zone_pools.keys() | other.zone_pools.keys()
                if self.zone_pools.get(z) is not other.zone_pools.get(z)}


def under(zones: set[str]) -> Callable[[bytes], bool]:
    """Whether a lower-cased wire name is in one of `zones`."""
    table = {wire_name(z): True for z in zones}
    return lambda name: bool(name) and wire.longest_suffix(table, name) is not None
