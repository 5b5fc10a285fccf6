"""Cache snapshots: HEIMDALL_CACHE_FILE survives restarts with correctly aged TTLs.

A snapshot is every live entry as it is sent (head, tail with TTLs, TTL
offsets, question end) with its expiry and last-aged time in *wall-clock*
seconds (the cache itself runs on the monotonic clock, which restarts at
boot). On restore, entries past expiry are dropped and the rest are aged by
the wall-clock time since they were last aged, so a name cached for 300 s,
snapshotted, and restored 100 s later answers with TTL ~200 and expires on
time.

File format (version 1), all integers big-endian:

    magic  b"HEIMDALL-CACHE\\x01\\n"
    body   count:u32, then per entry
           keylen:u16 key  head(10 bytes)  qend:u16  taillen:u32 tail
           noffsets:u16 offsets(u16 each)  expires:u64  aged:u64
    crc    zlib.crc32 of body:u32

Writes are atomic: a temp file in the same directory, fsync, rename, fsync of
the directory; a crash leaves the old snapshot or the new one, never half of
one. A snapshot that is truncated, corrupt (CRC), of another version or
internally inconsistent is ignored with one warning line, and the server
starts with an empty cache.

Workers: each worker process has its own cache, so each snapshots its own,
to FILE with one worker and FILE.<index> with N (the supervisor hands worker
i the name FILE.i; a restarted worker i restores FILE.i).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from typing import Callable

from heimdall import cachekey, wire
from heimdall.atomic import atomic_write_bytes
from heimdall.cache import LABEL_KEYS, Cache, Entry, label_id

log = logging.getLogger("heimdall.snapshot")

MAGIC = b"HEIMDALL-CACHE\x01\n"
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXP = struct.Struct("!QQ")
HEAD_LEN = 10


class SnapshotError(ValueError):
    """The snapshot cannot be used (truncated, corrupt, wrong version)."""


_OFFSET_STRUCTS: dict[int, struct.Struct] = {}


def _records(items: list, now_mono: int, shift: int) -> tuple[list[bytes], int]:
    """The serialised (key, entry) pairs that are still valid at now_mono, and how many."""
    parts: list[bytes] = []
    u16, u32, exp = _U16.pack, _U32.pack, _EXP.pack
    labels = LABEL_KEYS
    for key, e in items:
        if e.expires <= now_mono or len(e.head) != HEAD_LEN or len(key) > 0xFFFF or key[:1] == b"G":
            continue  # (a client group's own answer: which group is which may differ at the next start)
        lid = getattr(e, "lid", 0)
        if lid < len(labels) and labels[lid][2]:  # a block answer: rebuilt from the lists in force
            continue
        n = len(e.offsets)
        st = _OFFSET_STRUCTS.get(n)
        if st is None:
            st = _OFFSET_STRUCTS[n] = struct.Struct(f"!H{n}H")
        parts.append(b"".join((u16(len(key)), key, e.head, u16(e.qend), u32(len(e.tail)), e.tail,
                               st.pack(n, *e.offsets), exp(e.expires + shift, e.aged + shift))))
    return parts, len(parts)


def _finish(parts: list[bytes], count: int) -> bytes:
    body = _U32.pack(count) + b"".join(parts)
    return MAGIC + body + _U32.pack(zlib.crc32(body))


def dump(cache: Cache, now_mono: int, now_wall: float) -> bytes:
    """The snapshot bytes of every unexpired entry (monotonic times mapped to wall clock)."""
    parts, count = _records(list(cache.map.items()), now_mono, int(now_wall) - now_mono)
    return _finish(parts, count)


async def dump_async(cache: Cache, chunk: int = 500) -> bytes:
    """dump() in chunks, yielding to the event loop between them (a 100k-entry cache would otherwise
    stall the worker for most of a second)."""
    now_mono, now_wall = int(time.monotonic()), time.time()
    shift = int(now_wall) - now_mono
    keys = list(cache.map)  # no per-entry tuples: 100k new objects at once would trigger a long GC pass
    m = cache.map
    parts: list[bytes] = []
    count = 0
    for i in range(0, len(keys), chunk):  # entries put or evicted meanwhile are in the next snapshot
        got, n = _records([(k, m[k]) for k in keys[i:i + chunk] if k in m], now_mono, shift)
        parts += got
        count += n
        await asyncio.sleep(0)
    return _finish(parts, count)


def load(data: bytes, now_mono: int, now_wall: float) -> tuple[list[tuple[bytes, Entry]], int]:
    """(key, entry) pairs still valid at now_wall, aged to it; and how many had expired.

    Raises SnapshotError on anything malformed (never another exception).
    """
    if not data.startswith(MAGIC):
        raise SnapshotError("not a heimdall cache snapshot (or another version)")
    body, crc = data[len(MAGIC):-4], data[-4:]
    if len(data) < len(MAGIC) + 8 or _U32.unpack(crc)[0] != zlib.crc32(body):
        raise SnapshotError("truncated or corrupt (checksum mismatch)")
    wall = int(now_wall)
    out: list[tuple[bytes, Entry]] = []
    expired = 0
    try:
        (count,) = _U32.unpack_from(body, 0)
        off = 4
        for _ in range(count):
            (klen,) = _U16.unpack_from(body, off)
            key = body[off + 2:off + 2 + klen]
            off += 2 + klen
            head = body[off:off + HEAD_LEN]
            (qend,) = _U16.unpack_from(body, off + HEAD_LEN)
            (tlen,) = _U32.unpack_from(body, off + HEAD_LEN + 2)
            off += HEAD_LEN + 6
            tail = body[off:off + tlen]
            off += tlen
            (n,) = _U16.unpack_from(body, off)
            offsets = struct.unpack_from(f"!{n}H", body, off + 2)
            off += 2 + 2 * n
            expires, aged = _EXP.unpack_from(body, off)
            off += _EXP.size
            if (len(key) != klen or len(head) != HEAD_LEN or len(tail) != tlen or qend < 17
                    or any(o + 4 > tlen for o in offsets) or aged > expires):
                raise SnapshotError("inconsistent entry")
            if expires <= wall:
                expired += 1
                continue
            entry = Entry(head, tail, qend, now_mono, expires - wall, offsets)
            # TTLs in tail are as of `aged`: the first refresh() ages them by the downtime too
            entry.aged = now_mono - max(0, wall - aged)
            out.append((key, entry))
        if off != len(body):
            raise SnapshotError("trailing bytes")
    except struct.error:
        raise SnapshotError("truncated entry") from None
    return out, expired


def restore(cache: Cache, path: str, local: Callable | None = None) -> int:
    """Fill cache from path; how many entries were restored. Never raises: a bad file is one warning.

    Entries for names a policy stage now answers (blocked) are dropped: the pipeline's `local`
    answers, and caches, those itself; block answers were never written (see _records).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning(f"cache snapshot {path} unreadable, starting empty: {exc.strerror or exc}")
        return 0
    try:
        entries, expired = load(data, int(time.monotonic()), time.time())
    except SnapshotError as exc:
        log.warning(f"cache snapshot {path} ignored, starting empty: {exc}")
        return 0
    restored = blocked = 0
    for key, entry in entries:
        data = cachekey.query_for_key(key)
        try:
            q = wire.parse_query(data)
        except wire.WireError:
            continue  # not a key we wrote
        if local is not None:
            try:
                answered = bool(local(data, q))
            except Exception:  # noqa: BLE001 - a failing policy stage must not stop the worker from starting
                answered = True
            if answered:
                blocked += 1
                continue
        entry.lid = label_id(q.qtype, entry.head[1] & wire.RCODE_MASK)  # metrics label, as build_entry sets
        cache.put(key, entry)
        restored += 1
    extra = f", {blocked} now blocked" if blocked else ""
    log.info(f"cache snapshot {path}: restored {restored} entries ({expired} expired, dropped{extra})")
    return restored


def save(cache: Cache, path: str) -> int:
    """Snapshot cache to path atomically; the size written."""
    data = dump(cache, int(time.monotonic()), time.time())
    atomic_write_bytes(path, data)
    return len(data)


class Snapshotter:
    """Restore at start, snapshot every `interval` seconds and at clean shutdown."""

    def __init__(self, cache: Cache, path: str, interval: float):
        self.cache = cache
        self.path = path
        self.interval = interval
        self._task: asyncio.Task | None = None
        self._failed = False

    def restore(self, local: Callable | None = None) -> int:
        return restore(self.cache, self.path, local)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            data = await dump_async(self.cache)  # on the loop (the cache is not locked), in chunks
            try:
                await loop.run_in_executor(None, atomic_write_bytes, self.path, data)  # disk I/O off the loop
                self._failed = False
            except OSError as exc:
                if not self._failed:  # once per failure streak, not every interval
                    log.warning(f"cache snapshot to {self.path} failed: {exc.strerror or exc}")
                self._failed = True

    def stop_and_save(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            size = save(self.cache, self.path)
            log.info(f"cache snapshot {self.path}: saved {len(self.cache)} entries ({size} bytes)")
        except OSError as exc:
            log.warning(f"cache snapshot to {self.path} failed: {exc.strerror or exc}")
