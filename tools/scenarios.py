"""Query construction for the load scenarios, in DNS wire format.

Every scenario is a deterministic stream of (question bytes, kind) pairs so a
run is reproducible and the cache-hit / cache-miss mix holds by construction,
not by chance. The question bytes are the wire question section (name, type,
class); the engine prepends a 12-byte header with a fresh ID. `kind` tells
the engine which answers count as success:

* KIND_NORMAL: a name the upstream answers: success is NOERROR.
* KIND_BLOCKED: a name on the generated blocklist: success is NOERROR
  (zero-IP answer), NXDOMAIN or REFUSED, whichever the server's mode gives.
* KIND_FILE: a line of a user's --queries file: NOERROR or NXDOMAIN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from heimdall.atomic import atomic_write_text
from tools.errors import EXIT_ENVIRONMENT, ToolError

TEST_TYPES = ("cache-hit", "cache-miss", "mixed", "high-concurrency", "blocking", "zipf")
DEFAULT_CLIENTS = {"high-concurrency": 256}
DEFAULT_CLIENTS_OTHER = 20

KIND_NORMAL, KIND_BLOCKED, KIND_FILE = 0, 1, 2
KIND_NAMES = ("normal", "blocked", "file")
RCODE_NAMES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
               "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE")
# rcodes that count as success, per kind
SUCCESS_RCODES = ({0}, {0, 3, 5}, {0, 3})

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
          "SRV": 33, "DS": 43, "DNSKEY": 48, "HTTPS": 65, "SVCB": 64, "CAA": 257, "ANY": 255}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
CLASS_IN = b"\x00\x01"
HEADER_TAIL = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"  # flags RD, QD=1, AN=NS=AR=0


def encode_name(name: str) -> bytes:
    """Wire form of a domain name; ValueError when it is not a valid name."""
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError("name longer than 255 bytes")
    return bytes(out)


def question(name: str, qtype: str = "A") -> bytes:
    return encode_name(name) + QTYPES[qtype].to_bytes(2, "big") + CLASS_IN


def decode_question(q: bytes) -> tuple[str, str]:
    """(name, type) of a wire question: used to write dnsperf query files."""
    labels, i = [], 0
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode("ascii"))
        i += 1 + q[i]
    qtype = int.from_bytes(q[i + 1:i + 3], "big")
    return ".".join(labels) + ".", QTYPE_NAMES.get(qtype, f"TYPE{qtype}")


def warm_names(count: int, zone: str = "bench.test") -> list[str]:
    """The fixed set cache-hit primes and mixed re-asks."""
    return [f"w{i}.hit.{zone.rstrip('.')}" for i in range(count)]


def blocklist_domains(count: int, zone: str = "bench.test") -> list[str]:
    """Deterministic blocklist names; the blocking scenario asks half its queries from these."""
    return [f"ads{i}.blocked.{zone.rstrip('.')}" for i in range(count)]


def write_blocklist(path: Path, count: int, zone: str = "bench.test") -> None:
    """One domain per line, written atomically, for HEIMDALL_BLOCKLISTS."""
    atomic_write_text(path, "".join(d + "\n" for d in blocklist_domains(count, zone)))


def _warm_questions(count: int, zone: str) -> list[bytes]:
    # every fourth name is asked as AAAA: the cache keys on type too
    return [question(n, "AAAA" if i % 4 == 3 else "A") for i, n in enumerate(warm_names(count, zone))]


@dataclass
class QueryFileResult:
    questions: list[bytes]
    bad_lines: list[tuple[int, str]]  # (line number, why)


def read_queries_file(path: Path, max_bad_reported: int = 20) -> QueryFileResult:
    """Parse a dnsperf-format file ("name type" per line); bad lines are kept aside, not fatal."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ToolError(f"cannot read queries file {path}: {exc.strerror}", EXIT_ENVIRONMENT) from None
    qs: list[bytes] = []
    bad: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith((";", "#")):
            continue
        parts = line.split()
        if len(parts) != 2:
            bad.append((lineno, f"expected 'name type', got {line[:60]!r}"))
            continue
        name, qtype = parts[0], parts[1].upper()
        if qtype not in QTYPES:
            bad.append((lineno, f"unknown query type {parts[1][:20]!r}"))
            continue
        try:
            qs.append(question(name, qtype))
        except (ValueError, UnicodeError) as exc:
            bad.append((lineno, f"bad name {name[:60]!r}: {exc}"))
    if not qs:
        raise ToolError(f"queries file {path} has no valid queries ({len(bad)} bad lines)", EXIT_ENVIRONMENT)
    return QueryFileResult(qs, bad)


@dataclass
class Scenario:
    """What one run asks: a cycled fixed list plus, every `unique_every`-th query, a unique name."""

    test_type: str
    zone: str = "bench.test"
    fixed: list[tuple[bytes, int]] = field(default_factory=list)  # cycled (question, kind)
    prime: list[bytes] = field(default_factory=list)              # asked once before the window
    unique_every: int = 0   # 0: never; 1: always; 5: one in five (mixed = 80/20)
    run_tag: str = ""       # makes unique names differ between runs

    def stream(self, worker: int, workers: int) -> "QueryStream":
        return QueryStream(self, worker, workers)


class QueryStream:
    """Per-process iterator over a scenario; `next()` is on the generator's hot path."""

    def __init__(self, sc: Scenario, worker: int, workers: int) -> None:
        self.fixed = sc.fixed
        self.n_fixed = len(sc.fixed)
        self.pos = (self.n_fixed * worker // max(workers, 1)) if self.n_fixed else 0
        self.unique_every = sc.unique_every
        self.tick = 0
        self.counter = 0
        zone = encode_name(sc.zone)
        self.miss_suffix = encode_name("miss." + sc.zone.rstrip(".")) if sc.zone.strip(".") else zone
        self.prefix = f"u{sc.run_tag}p{worker}x".encode()

    def next(self) -> tuple[bytes, int]:
        self.tick += 1
        if self.unique_every and self.tick % self.unique_every == 0:
            self.counter += 1
            label = self.prefix + b"%x" % self.counter
            qtype = b"\x00\x1c" if self.counter % 4 == 0 else b"\x00\x01"
            return bytes((len(label),)) + label + self.miss_suffix + qtype + CLASS_IN, KIND_NORMAL
        q = self.fixed[self.pos]
        self.pos += 1
        if self.pos == self.n_fixed:
            self.pos = 0
        return q


ZIPF_EXPONENT = 1.0    # web and DNS name popularity is close to Zipf with s near 1
ZIPF_SEQUENCE = 100_000  # draws before the stream repeats
ZIPF_SEED = 20_021     # the same popularity order in every run, so runs compare


def zipf_sequence(questions: list[bytes], length: int = ZIPF_SEQUENCE, exponent: float = ZIPF_EXPONENT,
                  seed: int = ZIPF_SEED) -> list[bytes]:
    """`length` draws where the k-th question is asked in proportion to 1 / k**exponent.

    A real resolver's traffic: a few names asked all the time, a long tail asked
    now and then, so how long entries live decides the hit ratio (prefetch,
    TTL caps, cache size). Nothing is primed: the tail misses as it would.
    """
    import random

    weights = [1.0 / (rank ** exponent) for rank in range(1, len(questions) + 1)]
    return random.Random(seed).choices(questions, weights=weights, k=length)


def build_scenario(test_type: str, zone: str = "bench.test", warm_set: int = 1000,
                   blocklist_size: int = 1000, queries: list[bytes] | None = None,
                   run_tag: str | None = None) -> Scenario:
    """The scenario the guide defines for `test_type` (a --queries file replaces the fixed set)."""
    if test_type not in TEST_TYPES:
        raise ToolError(f"unknown test type {test_type!r}; choose from {', '.join(TEST_TYPES)}")
    zone = zone.rstrip(".") or "bench.test"
    tag = run_tag if run_tag is not None else os.urandom(3).hex()
    if queries:
        warm = [(q, KIND_FILE) for q in queries]
    else:
        warm = [(q, KIND_NORMAL) for q in _warm_questions(warm_set, zone)]
    sc = Scenario(test_type, zone, run_tag=tag)
    if test_type in ("cache-hit",):
        sc.fixed, sc.prime = warm, [q for q, _ in warm]
    elif test_type == "cache-miss":
        sc.fixed, sc.unique_every = (warm, 0) if queries else ([], 1)
    elif test_type in ("mixed", "high-concurrency"):
        sc.fixed, sc.prime, sc.unique_every = warm, [q for q, _ in warm], 5
    elif test_type == "blocking":
        blocked = [question(n) for n in blocklist_domains(blocklist_size, zone)]
        inter: list[tuple[bytes, int]] = []
        for i in range(max(len(blocked), len(warm))):
            inter.append((blocked[i % len(blocked)], KIND_BLOCKED))
            inter.append(warm[i % len(warm)])
        sc.fixed, sc.prime = inter, [q for q, _ in warm]
    elif test_type == "zipf":
        kind = KIND_FILE if queries else KIND_NORMAL
        sc.fixed = [(q, kind) for q in zipf_sequence([q for q, _ in warm])]
    return sc
