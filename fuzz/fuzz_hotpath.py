"""Fuzz target for the C UDP reader (heimdall/_hotpath.c): batches of datagrams at a real reader.

    python fuzz/fuzz_hotpath.py --sweep [--random N] [--seed S]
    python fuzz/fuzz_hotpath.py -runs=20000 -artifact_prefix=/tmp/crash- CORPUS_DIR   # atheris
    python fuzz/fuzz_hotpath.py --write-seeds CORPUS_DIR

The reader is the one tests/hotpath_rig.py installs: a DnsServer's cache with
16 entries, a loopback socket, a client. A clean batch is checked datagram by
datagram against the Python model of a hit: a fresh hit answers
entry.reply(data), a datagram longer than a slot gets FORMERR, anything else
reaches the slow path unchanged. A damaged batch first breaks the state
around the reader (an entry's field set to another type or out of range, an
entry replaced by another object, the label list emptied or given a
non-int) and is checked only for accounting: each datagram answered or passed
on once, and no exception out of the reader. Either way the reader must not
crash, and under scripts/asan.sh (AddressSanitizer and UBSan) must touch no
memory it does not own and do no undefined arithmetic.

--sweep, what scripts/asan.sh runs: every truncation and every single-byte
value at every position of each cached query (about 160,000 datagrams), then
N seeded random batches, clean and damaged. Atheris (Python coverage only,
as the extension is not built for libFuzzer) takes the same batches as
bytes: first byte even for clean, odd for damaged; the rest split on 0xFE 0xFE.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests")] + ([] if ROOT in sys.path else [ROOT])

try:
    import atheris
except ImportError:  # the sweep needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__" and "--sweep" not in sys.argv:
    with atheris.instrument_imports(include=["heimdall"]):
        from hotpath_rig import NAMES, Rig, make_query

        from heimdall import wire
else:
    from hotpath_rig import NAMES, Rig, make_query

    from heimdall import wire

from heimdall.cache import MAX_LABELS  # noqa: E402

SEP = b"\xfe\xfe"
QUERIES = [make_query(name, qtype, qtype == "AAAA", qid=0x1234) for name in NAMES for qtype in ("A", "AAAA")]
ODD = [None, -1, 0, 11, 12, 2**31, 2**63 - 1, -2**63, 2**64, 2**70, True, 1.5, "x", b"", b"x" * 5000, (), []]
FIELDS = ("head", "tail", "qend", "aged", "expires", "offsets", "lid")


class Finding(AssertionError):
    pass


class Reader:
    """The rig, counting what it checked; the reader's reports go to a counter, not stderr."""

    def __init__(self) -> None:
        self.rig = Rig()
        if type(self.rig.read).__name__ != "HotPath":
            raise SystemExit("the C hot path is not built")
        self.datagrams = self.batches = self.skipped = self.reported = 0
        sys.unraisablehook = self.report

    def report(self, unraisable) -> None:
        self.reported += 1

    def clean(self, datagrams: list[bytes]) -> None:
        """Replies and slow-path datagrams exactly as the model says."""
        rig = self.rig
        rig.slow.clear()
        replies = rig.exchange(datagrams)
        self.count(datagrams)
        expected = [self.model(d) for d in datagrams]
        if rig.ticked():  # TTLs aged to either second (exchange or model): the model cannot say which
            self.skipped += 1
            return
        for i, d in enumerate(datagrams):  # judged one at a time, so that a finding names its datagram
            want = expected[i]
            got = replies.pop(0) if want is not None and replies else None
            passed = rig.slow.pop(0)[0] if want is None and rig.slow else None
            if (want is not None and got != want) or (want is None and passed != d):
                raise Finding(f"datagram {i} of {len(datagrams)}, {len(d)} bytes {d[:48]!r}...: "
                              f"expected {'the slow path' if want is None else want[:48]!r}, "
                              f"got {got[:48] if got else 'no reply'!r}")
        if replies or rig.slow:
            raise Finding(f"{len(replies)} replies and {len(rig.slow)} passed on beyond the model's")

    def model(self, data: bytes) -> bytes | None:
        if len(data) > 4096:
            return None if data[2] & wire.QR else wire.error_reply(data, wire.FORMERR)
        return self.rig.model(data)

    def damaged(self, datagrams: list[bytes], pick: random.Random) -> None:
        """The state around the reader broken one way; every datagram still answered or passed on once."""
        rig = self.rig
        labels = rig.srv.stats.hit_labels
        key = pick.choice(QUERIES)[2:].lower()
        how = pick.randrange(4)
        if how == 0:
            setattr(rig.srv.cache.map[key], pick.choice(FIELDS), pick.choice(ODD))
        elif how == 1:
            rig.srv.cache.map[key] = pick.choice(ODD)
        elif how == 2:
            labels.clear()
        else:
            labels[pick.randrange(len(labels))] = pick.choice(ODD)
        rig.slow.clear()
        try:
            replies = rig.exchange(datagrams)
        finally:
            self.restore()
        self.count(datagrams)
        dropped = sum(1 for d in datagrams if len(d) > 4096 and d[2] & wire.QR)
        if len(replies) + len(rig.slow) + dropped != len(datagrams):
            raise Finding(f"{len(datagrams)} datagrams, {len(replies)} replies, {len(rig.slow)} passed on")

    def restore(self) -> None:
        labels = self.rig.srv.stats.hit_labels
        labels[:] = [0] * MAX_LABELS
        for q in QUERIES:
            self.rig.put(q, ttl=300)

    def count(self, datagrams: list[bytes]) -> None:
        self.batches += 1
        self.datagrams += len(datagrams)


def mutations(query: bytes):
    """Every truncation, then every other value of every byte."""
    for n in range(len(query)):
        yield query[:n]
    for i in range(len(query)):
        for v in range(256):
            if v != query[i]:
                yield query[:i] + bytes((v,)) + query[i + 1:]


def random_datagram(pick: random.Random) -> bytes:
    kind = pick.randrange(6)
    q = bytearray(pick.choice(QUERIES))
    q[0:2] = pick.randbytes(2)
    if kind == 0:  # a hit in random case
        return bytes(c ^ 0x20 if i >= 12 and chr(c).isalpha() and pick.random() < 0.5 else c for i, c in enumerate(q))
    if kind == 1:  # a few bytes changed
        for _ in range(pick.randrange(1, 4)):
            q[pick.randrange(len(q))] = pick.randrange(256)
        return bytes(q)
    if kind == 2:  # spliced with another query
        other = pick.choice(QUERIES)
        return bytes(q[:pick.randrange(len(q))] + other[pick.randrange(len(other)):])
    if kind == 3:  # longer than a slot
        return bytes(q) + pick.randbytes(pick.randrange(4097 - len(q), 6000))
    if kind == 4:  # a hit with trailing bytes
        return bytes(q) + pick.randbytes(pick.randrange(1, 40))
    return pick.randbytes(pick.randrange(0, 600))


def sweep(reader: Reader, randoms: int, seed: int) -> None:
    batch: list[bytes] = []
    for q in QUERIES:
        for d in mutations(q):
            batch.append(d)
            if len(batch) == 64:
                reader.clean(batch)
                batch = []
    if batch:
        reader.clean(batch)
    pick = random.Random(seed)
    for i in range(randoms):
        datagrams = [random_datagram(pick) for _ in range(pick.randrange(1, 100))]
        if i % 3 == 2:
            reader.damaged(datagrams, pick)
        else:
            reader.clean(datagrams)


READER: Reader | None = None


def TestOneInput(data: bytes) -> None:
    global READER
    if not data:
        return
    if READER is None:
        READER = Reader()
    datagrams = [d for d in data[1:].split(SEP) if len(d) <= 8192][:100] or [b""]
    if data[0] & 1:
        READER.damaged(datagrams, random.Random(data))
    else:
        READER.clean(datagrams)


def seeds() -> list[bytes]:
    return [b"\x00" + SEP.join(QUERIES[i:i + 4]) for i in range(0, len(QUERIES), 4)] + [b"\x01" + QUERIES[0]]


def main() -> None:
    if "--write-seeds" in sys.argv:
        out = sys.argv[sys.argv.index("--write-seeds") + 1]
        os.makedirs(out, exist_ok=True)
        for i, s in enumerate(seeds()):
            with open(os.path.join(out, f"seed-{i:02d}"), "wb") as f:
                f.write(s)
        return
    if "--sweep" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--sweep", action="store_true")
        ap.add_argument("--random", type=int, default=300, help="random batches after the sweep")
        ap.add_argument("--seed", type=int, default=1)
        args = ap.parse_args()
        t0 = time.monotonic()
        reader = Reader()
        sweep(reader, args.random, args.seed)
        print(f"fuzz_hotpath: {reader.datagrams} datagrams in {reader.batches} batches, "
              f"{reader.skipped} unjudged (clock tick), {reader.reported} reader reports, no finding, "
              f"{time.monotonic() - t0:.1f} s")
        return
    if atheris is None:
        sys.exit("atheris is not installed (pip install atheris); --sweep needs no atheris")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
