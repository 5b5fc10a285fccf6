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


class ZoneBound:
    """HEIMDALL_MAX_INFLIGHT_PER_ZONE: upstream fetches in flight per parent name."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.counts: dict[bytes, int] = {}

    def full(self, question: bytes) -> bool:
        """No room for another fetch under the question's parent (a look, nothing counted)."""
        return self.counts.get(question[question[0] + 1:-4], 0) >= self.bound

    def enter(self, question: bytes) -> bytes | None:
        """The parent counted for one more fetch (give it to leave()), or None at the bound."""
        zone = question[question[0] + 1:-4]
        n = self.counts.get(zone, 0)
        if n >= self.bound:
            return None
        self.counts[zone] = n + 1
        return zone

    def leave(self, zone: bytes) -> None:
        drop(self.counts, zone)


class ClientBound:
    """HEIMDALL_MAX_INFLIGHT_PER_CLIENT: queries of one client address waiting upstream."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.counts: dict[object, int] = {}

    def enter(self, client: object) -> bool:
        """One more waiting query of this client; False (not counted) at the bound."""
        who = client[0] if isinstance(client, tuple) else client
        n = self.counts.get(who, 0)
        if n >= self.bound:
            return False
        self.counts[who] = n + 1
        return True

    def leave(self, client: object) -> None:
        drop(self.counts, client[0] if isinstance(client, tuple) else client)


def drop(table: dict, key: object) -> None:
    """One less for `key`; a key at zero is removed, so the tables hold only what waits."""
    left = table[key] - 1
    if left:
        table[key] = left
    else:
        del table[key]
