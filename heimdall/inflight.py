"""Bounded upstream work per client and per zone: what a random-subdomain flood can hold.

A water-torture flood asks `<random>.victim.example` as fast as it can: every
query is a miss, and when victim.example's servers are slow every one of them
waits upstream, until HEIMDALL_MAX_INFLIGHT is full and everybody's misses get
SERVFAIL. These two bounds stop it earlier, per worker:

* HEIMDALL_MAX_INFLIGHT_PER_ZONE: upstream fetches in flight for names with
  the same parent (the name less its first label: `victim.example` for
  `x7f3k.victim.example`). A forwarder does not know where zones are cut; the
  parent is what a random first label cannot change. Clients asking the same
  question wait on one fetch (coalescing), so a burst of popular names counts
  once per name; a flood of unique names counts every one.
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

    def enter_zone(self, question: bytes) -> bool:
        """One more upstream fetch for the question's parent; False (not counted) at the bound."""
        if not self.per_zone:
            return True
        zone = question[question[0] + 1:-4]
        n = self.zones.get(zone, 0)
        if n >= self.per_zone:
            return False
        self.zones[zone] = n + 1
        return True

    def leave_zone(self, question: bytes) -> None:
        if self.per_zone:
            drop(self.zones, question[question[0] + 1:-4])

    def enter_client(self, client: object) -> bool:
        """One more query of this client waiting upstream; False (not counted) at the bound."""
        if not self.per_client:
            return True
        who = client[0] if isinstance(client, tuple) else client
        n = self.clients.get(who, 0)
        if n >= self.per_client:
            return False
        self.clients[who] = n + 1
        return True

    def leave_client(self, client: object) -> None:
        if self.per_client:
            drop(self.clients, client[0] if isinstance(client, tuple) else client)


def drop(table: dict, key: object) -> None:
    """One less for `key`; a key at zero is removed, so the tables hold only what waits."""
    left = table[key] - 1
    if left:
        table[key] = left
    else:
        del table[key]
