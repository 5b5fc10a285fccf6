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


class Bound:
    """At most `bound` at once per key: fetches per parent name, or waiting queries per client."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.counts: dict[object, int] = {}

    def full(self, key: object) -> bool:
        """No room for one more under `key` (a look, nothing counted)."""
        return self.counts.get(key, 0) >= self.bound

    def enter(self, key: object) -> bool:
        """One more under `key`; False (not counted) at the bound."""
        n = self.counts.get(key, 0)
        if n >= self.bound:
            return False
        self.counts[key] = n + 1
        return True

    def leave(self, key: object) -> None:
        """One less under `key`; a key at zero is removed, so the table holds only what waits."""
        left = self.counts[key] - 1
        if left:
            self.counts[key] = left
        else:
            del self.counts[key]


def parent(question: bytes) -> bytes:
    """A lower-cased wire question's name less its first label: the zone key of a fetch."""
    return question[question[0] + 1:-4]


def client_key(client: object) -> object:
    """The client's address (a UDP or TCP peer is (host, port, ...))."""
    return client[0] if isinstance(client, tuple) else client
