"""The per-worker answer cache: compact entries, TTL aging once a second, CLOCK eviction.

An entry is what a hit sends, pre-built: reply = client ID + `head` (flags and
counts) + client's question bytes + `tail` (all records, plus our OPT for EDNS
clients). TTLs inside `tail` are re-aged at most once per second (`aged`),
at offsets found when the answer was stored. Eviction is CLOCK (second
chance): a deque of keys in insertion order; an entry asked for since the hand
last passed it (every hit, in C or Python, sets its `mark`) gets another
round, others go. This approximates LRU without a linked list per entry, and
keeps an entry near 300 bytes.

Admission: a full cache takes a new name only when it is asked for the second
time within a while (a "doorkeeper", as in TinyLFU): the first time only its
hash is remembered. A flood of one-off names (random subdomains) then evicts
nothing, and a name asked twice is cached from its second miss on. The
remembered hashes are bounded (half the capacity, then forgotten at once).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from heimdall import bailiwick, cachekey, wire
from heimdall.wire import ResponseScan, WireError

_HEADS: dict[bytes, bytes] = {}  # interned: most entries share a few heads ...
_OFFSETS: dict[tuple[int, ...], tuple[int, ...]] = {}  # ... and a few TTL layouts


_INTS: dict[int, int] = {}  # one int object per distinct second/expiry instead of one per entry

# Metric labels: an entry carries a small int `lid` naming its (qtype, rcode, blocked);
# the fast path counts hits in a per-worker list indexed by it (one list add per hit).
MAX_LABELS = 1024
LABELS: dict[tuple[int, int, bool], int] = {(0, 0, False): 0}  # 0: unlabelled / overflow
LABEL_KEYS: list[tuple[int, int, bool]] = [(0, 0, False)]


def label_id(qtype: int, rcode: int, blocked: bool = False) -> int:
    """The label index for (qtype, rcode, blocked); 0 once MAX_LABELS are in use."""
    key = (qtype, rcode, blocked)
    lid = LABELS.get(key)
    if lid is None:
        if len(LABEL_KEYS) >= MAX_LABELS:
            return 0
        lid = LABELS[key] = len(LABEL_KEYS)
        LABEL_KEYS.append(key)
    return lid


def shared_int(value: int) -> int:
    """The same int object for equal values (ints above 256 are otherwise 32 bytes each)."""
    obj = _INTS.get(value)
    if obj is None:
        if len(_INTS) >= 8192:
            _INTS.clear()
        _INTS[value] = obj = value
    return obj


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Asked for in the last tenth of its TTL, an entry calls start(key) (Unbound's prefetch).

    refresh() is where both hot paths, C and Python, look at an entry's age
    (at most once a second per entry), so the hook costs a hit nothing else.
    """

    key: bytes
    ttl: int
    start: Callable[[bytes], None]


class Entry:
    """One cached reply variant. Slots keep it ~100 bytes."""

    __slots__ = ("head", "tail", "qend", "aged", "expires", "offsets", "mark", "lid", "prefetch")

    def __init__(self, head: bytes, tail: bytes, qend: int, now: int, ttl: int, offsets: tuple[int, ...],
                 lid: int = 0):
        self.head = _HEADS.setdefault(head, head) if len(_HEADS) < 10_000 else head
        self.tail = tail
        self.qend = qend
        ints = _INTS  # shared_int inlined for the common case: the same second as the last entry's
        self.aged = ints.get(now) or shared_int(now)
        self.expires = ints.get(now + ttl) or shared_int(now + ttl)
        self.offsets = _OFFSETS.setdefault(offsets, offsets) if len(_OFFSETS) < 10_000 else offsets
        self.mark = False  # asked for since the CLOCK hand last passed: set by every hit, C and Python
        self.lid = lid
        self.prefetch: Prefetch | None = None  # with HEIMDALL_PREFETCH: how to refresh it, once

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
        hint = self.prefetch
        if hint is not None and (self.expires - now) * 10 <= hint.ttl:
            self.prefetch = None  # once: the refreshed answer is a new entry
            hint.start(hint.key)
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
        self.not_admitted = 0  # new names a full cache did not take: asked for once so far
        self._seen: set[int] = set()  # the doorkeeper: hashes of names a full cache did not take

    def __len__(self) -> int:
        return len(self.map)

    def get_fresh(self, key: bytes, now: int) -> Entry | None:
        """The entry if still valid (re-aged to now); drops it when past any stale window."""
        e = self.map.get(key)
        if e is None:
            return None
        if e.aged == now or e.refresh(now):
            e.mark = True
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
            if len(m) >= self.capacity and not self._admit(key):
                return
            self._order.append(key)
            self.inserts += 1
        m[key] = entry
        if len(m) > self.capacity:
            self._evict_one()
        if len(self._order) > 2 * self.capacity + 1024:
            self._order = deque(m)  # drop keys of entries that expired or were replaced

    def _admit(self, key: bytes) -> bool:
        """A full cache takes a new name the second time it comes within the doorkeeper's memory."""
        h = hash(key)
        seen = self._seen
        if h in seen:
            seen.discard(h)
            return True
        if len(seen) >= self.capacity // 2:
            seen.clear()
        seen.add(h)
        self.not_admitted += 1
        return False

    def _evict_one(self) -> None:
        m, order = self.map, self._order
        for _ in range(2 * len(order) + 1):
            key = order.popleft()
            e = m.get(key)
            if e is None:
                continue
            if e.mark:  # asked for since the hand last passed: second chance
                e.mark = False
                order.append(key)
                continue
            del m[key]
            self.evictions += 1
            return

    def drop_keys(self, key_matches: Callable[[bytes], bool]) -> int:
        """Drop every entry whose key `key_matches`; how many."""
        doomed = [key for key in self.map if key_matches(key)]
        for key in doomed:
            del self.map[key]
        return len(doomed)

    def drop_where(self, name_matches: Callable[[bytes], bool]) -> int:
        """Drop every entry whose question name (lower-cased wire form) `name_matches`; how many."""
        return self.drop_keys(lambda key: name_matches(cachekey.qname(key)))

    def clear(self) -> None:
        """Drop everything (e.g. when a blocklist reload must take effect for cached names)."""
        self.map.clear()
        self._order.clear()


def local_entry(reply: bytes, q: wire.Query, now: int, ttl: int, blocked: bool) -> Entry:
    """The entry for a reply a policy stage made (e.g. blocked), so the hot path serves it next time."""
    lid = label_id(q.qtype, reply[3] & wire.RCODE_MASK, blocked)
    return Entry(reply[2:12], reply[q.qend:], q.qend, now, ttl, (), lid)


def clamp_ttls(body: bytearray, scan: ResponseScan, min_ttl: int, max_ttl: int, negative_cap: int) -> int:
    """Rewrite every scanned TTL in body into [min_ttl, max_ttl]; negative answers use the SOA (RFC 2308).

    Returns the TTL the entry may live, -1 if it must not be cached
    (SERVFAIL and friends, or a negative answer without SOA).
    """
    rcode = scan.rcode
    if rcode != wire.NOERROR and rcode != wire.NXDOMAIN:
        return -1
    u32 = wire._U32
    ttls = []
    for off in scan.ttl_offsets:
        ttl = u32.unpack_from(body, off)[0]
        if ttl > 0x7FFFFFFF:  # RFC 2181: treat as zero
            ttl = 0
        ttl = max_ttl if ttl > max_ttl else (min_ttl if ttl < min_ttl else ttl)
        u32.pack_into(body, off, ttl)
        ttls.append(ttl)
    if rcode == wire.NXDOMAIN or scan.ancount == 0:
        if scan.soa_ttl_offset < 0:
            return -1
        soa_ttl = min(u32.unpack_from(body, scan.soa_ttl_offset)[0], scan.soa_minimum)
        ttl = min(max(min_ttl, min(max_ttl, soa_ttl)), negative_cap)
        for off in scan.ttl_offsets:  # nothing in a negative answer may outlive it
            if u32.unpack_from(body, off)[0] > ttl or off == scan.soa_ttl_offset:
                u32.pack_into(body, off, ttl)
        return ttl
    return min(ttls) if ttls else -1


EntryParts = tuple[bytes, bytes, tuple[int, ...], int, int]  # head, tail, TTL offsets in tail, lifetime, rcode
# heimdall/_hotpath.c: py_entry_parts for plain answers (None for anything else), ~1/6 of the instructions
_OUR_OPTS = (wire.OPTS[wire.OUR_UDP_SIZE, False], wire.OPTS[wire.OUR_UDP_SIZE, True])  # by the client's DO
_c_entry_parts: Callable[..., EntryParts | None] | None = getattr(wire.c_ext, "entry_parts", None)


def build_entry(response: bytes, client: bytes, q: wire.Query, limit: int, now: int,
                min_ttl: int, max_ttl: int, negative_cap: int) -> tuple[Entry, int]:
    """Turn a validated upstream response into the reply variant this client needs.

    Minimal responses: a positive answer keeps its answer section, a negative
    one its authority section (the SOA); the rest (NS, glue, upstream's OPT)
    is dropped, which makes replies smaller and entries ~40 bytes lighter.
    `limit` is the size the reply must fit (512/1232 for UDP, 65535 for TCP);
    when it does not fit, the variant is an empty TC=1 reply. Returns the
    entry and its cache lifetime (-1: serve once, do not cache).
    """
    opt = _OUR_OPTS[q.do] if q.edns else b""
    parts = None
    if _c_entry_parts is not None:
        parts = _c_entry_parts(response, client, q.qend, limit, min_ttl, max_ttl, negative_cap, q.do, opt)
    if parts is None:
        parts = py_entry_parts(response, client, q, limit, min_ttl, max_ttl, negative_cap, opt)
    head, tail, offsets, ttl, rcode = parts
    lid = LABELS.get((q.qtype, rcode, False))
    if lid is None:
        lid = label_id(q.qtype, rcode)
    return Entry(head, tail, q.qend, now, ttl if ttl > 0 else 0, offsets, lid), ttl


def py_entry_parts(response: bytes, client: bytes, q: wire.Query, limit: int, min_ttl: int, max_ttl: int,
                   negative_cap: int, opt: bytes) -> EntryParts:
    """build_entry's bytes: the reference the C walk is tested against, and the path of every answer
    it passes on (bailiwick stripping, errors)."""
    scan = wire.scan_response(response, full=False)
    if not bailiwick.clean(response, scan):  # only records about the question are kept
        response = bailiwick.strip(response, scan)
        scan = wire.scan_response(response, full=False)
    if scan.rcode > 15:
        raise WireError("extended rcode from upstream")
    if scan.qend != q.qend:
        raise WireError("upstream echoed a different question length")
    positive = scan.rcode == wire.NOERROR and scan.ancount > 0
    body = bytearray(response[:scan.end])
    ttl = clamp_ttls(body, scan, min_ttl, max_ttl, negative_cap)
    qend = q.qend
    records = bytes(body[qend:])
    b2 = wire.QR | (client[2] & wire.RD)
    b3 = wire.RA | (client[3] & wire.CD) | scan.rcode
    if (client[3] & wire.AD or q.do) and response[3] & wire.AD:
        b3 |= wire.AD
    extra = 1 if opt else 0
    if qend + len(records) + len(opt) > limit:
        return bytes((b2 | wire.TC, b3)) + wire._COUNTS.pack(1, 0, 0, extra), opt, (), ttl, scan.rcode
    head = bytes((b2, b3)) + wire._COUNTS.pack(1, scan.ancount, 0 if positive else scan.nscount, extra)
    return head, records + opt, tuple(off - qend for off in scan.ttl_offsets), ttl, scan.rcode
