"""Client groups: clients by address, each group with its own blocklists, allowlist and block answer.

    HEIMDALL_CLIENT_GROUPS='{"kids": {"clients": ["192.168.1.0/24", "10.0.0.5"],
                                     "blocklists": ["/etc/heimdall/kids.txt"], "blocking_mode": "nxdomain"}}'

(in the config file: a `[blocking.client_groups.kids]` table with the same keys). A client in no
group is in the default group, which HEIMDALL_BLOCKLISTS, HEIMDALL_ALLOWLIST and
HEIMDALL_BLOCKING_MODE describe; the most specific network wins.

The cache stays shared where answers do not differ: a name on nobody's blocklist is cached
once, under the key every client's query has, and the UDP hot path serves it to all. A name on
any group's blocklist (or the default's) may be answered differently per group, so each group,
the default included, caches its own answer under a group key (heimdall/cachekey.py) that the
hot path cannot produce: those queries always reach the pipeline, which knows the client.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from heimdall import cachekey
from heimdall.cache import LABEL_KEYS

if TYPE_CHECKING:
    from heimdall.blocking import Blocking
    from heimdall.cache import Cache
    from heimdall.wire import Query

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MODES = ("zero_ip", "nxdomain", "refused", "custom_ip")
GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_GROUPS = 255  # a group's number is one byte of its cache keys; 0 is the default group
DEFAULT_GROUP = "default"  # the clients in no group: its name in the control API


@dataclass(frozen=True)
class ClientGroup:
    name: str
    clients: tuple[Network, ...]
    blocklists: tuple[str, ...] = ()
    allowlist: tuple[str, ...] = ()
    blocking_mode: str = ""  # "": the default group's


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings")
    return tuple(value)


def parse_group(name: str, spec: Any) -> ClientGroup:
    if not GROUP_NAME.fullmatch(name) or name == DEFAULT_GROUP:
        raise ValueError(f"group name {name!r}: lower-case letters, digits, - and _, not {DEFAULT_GROUP!r}")
    if not isinstance(spec, dict):
        raise ValueError(f"group {name!r} must be a table of clients, blocklists, allowlist, blocking_mode")
    unknown = set(spec) - {"clients", "blocklists", "allowlist", "blocking_mode"}
    if unknown:
        raise ValueError(f"group {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        clients = tuple(ipaddress.ip_network(c, strict=False) for c in _strings(spec.get("clients"), f"{name}.clients"))
    except ValueError as exc:
        raise ValueError(f"group {name!r}: {exc}") from None
    if not clients:
        raise ValueError(f"group {name!r} has no clients")
    mode = spec.get("blocking_mode", "")
    if mode and mode not in MODES[:3]:
        raise ValueError(f"group {name!r}: blocking_mode {mode!r} is not one of {', '.join(MODES[:3])}")
    return ClientGroup(name, clients, _strings(spec.get("blocklists", []), f"{name}.blocklists"),
                       _strings(spec.get("allowlist", []), f"{name}.allowlist"), mode)


def parse_client_groups(text: str) -> tuple[ClientGroup, ...]:
    """Groups from JSON text (the config file turns its table into this); ValueError says what is wrong."""
    if not text.strip():
        return ()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("must be an object of groups by name")
    if len(doc) > MAX_GROUPS:
        raise ValueError(f"at most {MAX_GROUPS} groups")
    return tuple(parse_group(name, spec) for name, spec in doc.items())


class GroupTable:
    """Which group a client address is in: 0 for the default group, i for groups[i - 1]."""

    def __init__(self, groups: tuple[ClientGroup, ...]) -> None:
        self.names = (DEFAULT_GROUP, *(g.name for g in groups))  # by group number
        nets = [(net, i + 1) for i, g in enumerate(groups) for net in g.clients]
        self.nets = sorted(nets, key=lambda n: -n[0].prefixlen)  # the most specific first
        self._known: dict[str, int] = {}

    def lookup(self, host: str) -> int:
        gid = self._known.get(host)
        if gid is None:
            try:
                ip = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                ip = None
            gid = next((g for net, g in self.nets if ip is not None and ip.version == net.version and ip in net), 0)
            if len(self._known) >= 65536:  # a bound on what many source addresses can make it hold
                self._known.clear()
            self._known[host] = gid
        return gid


@dataclass(frozen=True)
class Placement:
    """A query's group where answers may differ: the key prefix and the blocking stage to ask."""

    group: int
    blocking: "Blocking | None"


class GroupedBlocking:
    """One worker's blocking stages, one per group, and the rules that keep their answers apart."""

    def __init__(self, default: "Blocking | None", groups: list["Blocking"], table: GroupTable, cache: "Cache"):
        self.stages: list[Blocking | None] = [default, *groups]
        self.table = table
        self.cache = cache
        for stage in self.stages:
            if stage is not None:
                stage.purger = self.purge

    def listed(self, name: bytes) -> bool:
        return any(s is not None and s.lists.match(name) for s in self.stages)

    def place(self, data: bytes, q: "Query", client: object) -> Placement | None:
        """None when no list names the query's name (the shared cache answers); else its group's stage."""
        if not self.listed(data[12:q.qend - 4].lower()):
            return None
        host = client[0] if isinstance(client, tuple) else ""
        gid = self.table.lookup(host)
        return Placement(gid, self.stages[gid])

    def purge(self) -> int:
        """After any list change: drop each cached answer that the lists in force would not give."""
        m, dropped = self.cache.map, 0
        for key, e in list(m.items()):
            name = cachekey.qname(key)
            blocked = LABEL_KEYS[e.lid][2]
            if key[:1] == b"G":
                stage = self.stages[key[1]] if key[1] < len(self.stages) else None
                keep = self.listed(name) and (stage is not None and stage.lists.match(name)) == blocked
            else:
                keep = not (name and self.listed(name))
            if not keep:
                del m[key]
                dropped += 1
        return dropped

    def request_reload(self) -> None:
        for stage in self.stages:
            if stage is not None:
                stage.request_reload()

    def pause(self, paused: Callable[[str], bool]) -> None:
        for stage, name in zip(self.stages, self.table.names):
            if stage is not None:
                stage.set_paused(paused(name))


def drop_group_entries(cache: "Cache") -> int:
    """Without groups no query carries a group key: drop every entry cached under one."""
    return cache.drop_keys(lambda key: key[:1] == b"G")
