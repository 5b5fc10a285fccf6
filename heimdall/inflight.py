"""Bounded upstream work per client and per zone: what a random-subdomain flood can hold.

A water-torture flood asks `<random>.victim.example` as fast as it can: every
query is a miss, and when victim.example's servers are slow every one of them
waits upstream, until HEIMDALL_MAX_INFLIGHT is full and everybody's misses get
SERVFAIL. These two bounds stop it earlier, per worker:

* HEIMDALL_MAX_INFLIGHT_PER_ZONE: client queries waiting upstream for names
  with the same parent (the name less its first label: `victim.example` for
  `x7f3k.victim.example`). A forwarder does not know where zones are cut; the
  parent is what a random first label cannot change.
* HEIMDALL_MAX_INFLIGHT_PER_CLIENT: client queries waiting upstream from one
  client address.

A query beyond either gets SERVFAIL at once, as beyond HEIMDALL_MAX_INFLIGHT,
and is counted (`heimdall_inflight_limited_zone_total`,
`heimdall_inflight_limited_client_total`). Cache hits are never counted or
refused: names already cached keep being answered.
"""

from __future__ import annotations


class InflightLimits:
    def __init__(self, per_client: int, per_zone: int) -> None:
        self.per_client = per_client  # 0: no bound
        self.per_zone = per_zone
        self.clients: dict[object, int] = {}
        self.zones: dict[bytes, int] = {}

    def enter(self, question: bytes, client: object) -> str | None:
        """Count one more waiting query; None, or which bound ("zone", "client") turns it away."""
        zones, clients = self.zones, self.clients
        if self.per_zone:
            zone = question[question[0] + 1:-4]
            n = zones.get(zone, 0)
            if n >= self.per_zone:
                return "zone"
        if self.per_client:
            who = client[0] if isinstance(client, tuple) else client
            m = clients.get(who, 0)
            if m >= self.per_client:
                return "client"
            clients[who] = m + 1
        if self.per_zone:
            zones[zone] = n + 1
        return None

    def leave(self, question: bytes, client: object) -> None:
        if self.per_zone:
            drop(self.zones, question[question[0] + 1:-4])
        if self.per_client:
            drop(self.clients, client[0] if isinstance(client, tuple) else client)


def drop(table: dict, key: object) -> None:
    """One less for `key`; a key at zero is removed, so the tables hold only what waits."""
    left = table[key] - 1
    if left:
        table[key] = left
    else:
        del table[key]
