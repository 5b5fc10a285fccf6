"""The per-worker answer cache: compact entries, TTL aging once a second, CLOCK eviction.

An entry is what a hit sends, pre-built: reply = client ID + `head` (flags and
counts) + client's question bytes + `tail` (all records, plus our OPT for EDNS
clients). TTLs inside `tail` are re-aged at most once per second (`aged`),
at offsets found when the answer was stored. Eviction is CLOCK (second
chance): a deque of keys in insertion order; an entry re-aged since the hand
last passed it gets another round, others go. This approximates LRU without a
per-hit write or a linked list per entry, and keeps an entry near 300 bytes.
"""

from __future__ import annotations

from collections import deque

from heimdall import wire
from heimdall.wire import ResponseScan, WireError

_HEADS: dict[bytes, bytes] = {}  # interned: most entries share a few heads ...
_OFFSETS: dict[tuple[int, ...], tuple[int, ...]] = {}  # ... and a few TTL layouts


_INTS: dict[int, int] = {}  # one int object per distinct second/expiry instead of one per entry


def shared_int(value: int) -> int:
    """The same int object for equal values (ints above 256 are otherwise 32 bytes each)."""
    obj = _INTS.get(value)
    if obj is None:
        if len(_INTS) >= 8192:
            _INTS.clear()
        _INTS[value] = obj = value
    return obj


class Entry:
    """One cached reply variant. Slots keep it ~100 bytes."""

    __slots__ = ("head", "tail", "qend", "aged", "expires", "offsets", "mark")

    def __init__(self, head: bytes, tail: bytes, qend: int, now: int, ttl: int, offsets: tuple[int, ...]):
        self.head = _HEADS.setdefault(head, head) if len(_HEADS) < 10_000 else head
        self.tail = tail
        self.qend = qend
        self.aged = now = shared_int(now)
        self.expires = shared_int(now + ttl)
        self.offsets = _OFFSETS.setdefault(offsets, offsets) if len(_OFFSETS) < 10_000 else offsets
        self.mark = now

    def reply(self, msg: bytes) -> bytes:
        """The reply for a client message: its ID and question, our flags and records."""
        return msg[:2] + self.head + msg[12:self.qend] + self.tail

    def refresh(self, now: int) -> bool:
        """Age TTLs to `now`; False when the entry has expired (it is left unchanged)."""
        if now >= self.expires:
            return False
        elapsed = now - self.aged
        if elapsed > 0 and self.offsets:
            self.tail = wire.age_ttls(self.tail, self.offsets, elapsed)
        self.aged = shared_int(now)
        return True

    def stale_reply(self, msg: bytes) -> bytes:
        """RFC 8767: an expired answer served with a short TTL."""
        return msg[:2] + self.head + msg[12:self.qend] + wire.set_ttls(self.tail, self.offsets, wire.STALE_TTL)


class Cache:
    """A dict of key -> Entry bounded at `capacity` with CLOCK eviction.

    The hot path uses `cache.map.get` directly; everything else goes through
    methods. Counters are plain ints for the stats object to read.
    """

    def __init__(self, capacity: int, serve_stale: int = 0):
        self.capacity = capacity
        self.serve_stale = serve_stale
        self.map: dict[bytes, Entry] = {}
        self._order: deque[bytes] = deque()
        self.evictions = 0
        self.expired = 0
        self.inserts = 0

    def __len__(self) -> int:
        return len(self.map)

    def get_fresh(self, key: bytes, now: int) -> Entry | None:
        """The entry if still valid (re-aged to now); drops it when past any stale window."""
        e = self.map.get(key)
        if e is None:
            return None
        if e.aged == now or e.refresh(now):
            return e
        if now >= e.expires + self.serve_stale:
            del self.map[key]
            self.expired += 1
        return None

    def get_stale(self, key: bytes, now: int) -> Entry | None:
        """An expired entry still inside the serve-stale window, for when upstreams fail."""
        e = self.map.get(key)
        if e is not None and self.serve_stale and now < e.expires + self.serve_stale:
            return e
        return None

    def put(self, key: bytes, entry: Entry) -> None:
        if self.capacity <= 0:
            return
        m = self.map
        if key not in m:
            self._order.append(key)
            self.inserts += 1
        m[key] = entry
        if len(m) > self.capacity:
            self._evict_one()
        if len(self._order) > 2 * self.capacity + 1024:
            self._order = deque(m)  # drop keys of entries that expired or were replaced

    def _evict_one(self) -> None:
        m, order = self.map, self._order
        for _ in range(2 * len(order) + 1):
            key = order.popleft()
            e = m.get(key)
            if e is None:
                continue
            if e.mark != e.aged:  # used since the hand last passed: second chance
                e.mark = e.aged
                order.append(key)
                continue
            del m[key]
            self.evictions += 1
            return

    def clear(self) -> None:
        """Drop everything (e.g. when a blocklist reload must take effect for cached names)."""
        self.map.clear()
        self._order.clear()


def clamp_ttls(msg: bytes, scan: ResponseScan, min_ttl: int, max_ttl: int, negative_cap: int) -> tuple[bytearray, int]:
    """Rewrite every TTL into [min_ttl, max_ttl]; negative answers use the SOA (RFC 2308).

    Returns the rewritten message and the TTL the entry may live, -1 if it
    must not be cached (SERVFAIL and friends, or a negative answer without SOA).
    """
    buf = bytearray(msg)
    rcode = scan.rcode
    negative = rcode == wire.NXDOMAIN or (rcode == wire.NOERROR and scan.ancount == 0)
    if rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return buf, -1
    for off in scan.ttl_offsets:
        wire.write_ttl(buf, off, max(min_ttl, min(max_ttl, wire.read_ttl(buf, off))))
    if negative:
        if scan.soa_ttl_offset < 0:
            return buf, -1
        soa_ttl = min(wire.read_ttl(msg, scan.soa_ttl_offset), scan.soa_minimum)
        ttl = min(max(min_ttl, min(max_ttl, soa_ttl)), negative_cap)
        wire.write_ttl(buf, scan.soa_ttl_offset, ttl)
        # Other records in a negative answer must not outlive it.
        for off in scan.ttl_offsets:
            if wire.read_ttl(buf, off) > ttl:
                wire.write_ttl(buf, off, ttl)
        return buf, ttl
    if not scan.ttl_offsets:
        return buf, -1
    return buf, min(wire.read_ttl(buf, off) for off in scan.ttl_offsets)


def build_entry(response: bytes, client: bytes, q: wire.Query, limit: int, now: int,
                min_ttl: int, max_ttl: int, negative_cap: int) -> tuple[Entry, int]:
    """Turn a validated upstream response into the reply variant this client needs.

    `limit` is the size the reply must fit (512/1232 for UDP, 65535 for TCP);
    when it does not fit, the variant is an empty TC=1 reply. Returns the
    entry and its cache lifetime (-1: serve once, do not cache).
    """
    scan = wire.scan_response(response)
    if scan.rcode > 15:
        raise WireError("extended rcode from upstream")
    body, ttl = clamp_ttls(response, scan, min_ttl, max_ttl, negative_cap)
    nscount, arcount = scan.nscount, scan.arcount
    ttl_offsets = scan.ttl_offsets
    if scan.rcode == wire.NOERROR and scan.ancount > 0:
        # Minimal responses: a positive answer is the answer section (smaller
        # replies, and about 40 fewer bytes per cached entry than NS + glue).
        del body[scan.answer_end:]
        nscount = arcount = 0
        ttl_offsets = [off for off in ttl_offsets if off < scan.answer_end]
        if ttl > 0:
            ttl = min(wire.read_ttl(body, off) for off in ttl_offsets)
    elif scan.opt_start >= 0:
        if scan.opt_end != len(body):
            raise WireError("OPT is not the last record")
        del body[scan.opt_start:]
        arcount -= 1
    records = bytes(body[scan.qend:])
    qend = q.qend
    qlen = qend - 12
    shift = qend - scan.qend  # our question and upstream's have the same length
    if shift:
        raise WireError("upstream echoed a different question length")
    offsets = tuple(off - scan.qend for off in ttl_offsets)
    b2 = wire.QR | (client[2] & wire.RD)
    b3 = wire.RA | (client[3] & wire.CD) | scan.rcode
    if (client[3] & wire.AD or q.do) and response[3] & wire.AD:
        b3 |= wire.AD
    opt = wire.opt_record(wire.OUR_UDP_SIZE, q.do) if q.edns else b""
    extra = 1 if q.edns else 0
    if 12 + qlen + len(records) + len(opt) > limit:
        head = bytes((b2 | wire.TC, b3)) + wire._COUNTS.pack(1, 0, 0, extra)
        return Entry(head, opt, qend, now, max(ttl, 0), ()), ttl
    head = bytes((b2, b3)) + wire._COUNTS.pack(1, scan.ancount, nscount, arcount + extra)
    return Entry(head, records + opt, qend, now, max(ttl, 0), offsets), ttl
