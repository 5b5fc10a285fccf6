"""RFC 5452 under load: 10,000 misses leave from random source ports with random IDs.

A real UDP upstream on loopback answers every query correctly and records
the (source port, ID) each one came with; dnsperf drives 10,000 unique names
through Heimdall. What a spoofer must guess is the pair: the port is the
channel's (heimdall/channels.py: at most ChannelSet.MAX_USES queries per
socket, so 10,000 queries need at least 10,000 / MAX_USES sockets, each on a
port the kernel picks at random), the ID is drawn afresh for every query.
"""

from __future__ import annotations

import math
import struct
import subprocess
import threading
from collections import Counter

import pytest

from heimdall.channels import ChannelSet
from tests.heimdall_server import HeimdallProcess
from tests.udp_responder import UdpResponder

N = 10_000
IDS = 65536


class RecordingUpstream(UdpResponder):
    """Answers every A query with 192.0.2.7 (TTL 300) and keeps each query's (source port, ID)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def handle(self, data: bytes, src: tuple) -> None:
        if len(data) < 17:
            return
        end = 12
        while data[end]:
            end += data[end] + 1
        end += 5  # the root label, type, class
        with self.lock:
            self.seen.append((src[1], int.from_bytes(data[:2], "big")))
        header = data[:2] + bytes((0x80 | (data[2] & 0x01), 0x80)) + struct.pack("!HHHH", 1, 1, 0, 0)
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes((192, 0, 2, 7))
        self.sock.sendto(header + data[12:end] + answer, src)


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> list[tuple[int, int]]:
    names = tmp_path_factory.mktemp("entropy") / "names.txt"
    names.write_text("".join(f"e{i}.entropy.test A\n" for i in range(N)))
    with RecordingUpstream() as up, HeimdallProcess([up.addr], env={"HEIMDALL_UPSTREAM_TIMEOUT": "2"}) as srv:
        run = subprocess.run(["dnsperf", "-s", srv.address, "-p", str(srv.port), "-d", str(names), "-n", "1",
                              "-c", "4", "-q", "64", "-t", "5", "-l", "60"],
                             capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, run.stderr
        assert f"Queries completed:    {N} " in run.stdout, run.stdout
        with up.lock:
            return list(up.seen)


def test_every_miss_reached_the_upstream(seen):
    assert len(seen) >= N


def test_source_ports_change_at_least_every_max_uses_queries(seen):
    per_port = Counter(port for port, _ in seen)
    # each socket carries at most MAX_USES queries: N queries need >= N / MAX_USES sockets, and their
    # kernel-chosen ports are distinct unless the kernel hands one out again (one such repeat allowed)
    assert len(per_port) >= math.ceil(N / ChannelSet.MAX_USES) - 1, len(per_port)
    assert max(per_port.values()) <= 2 * ChannelSet.MAX_USES


def test_no_port_and_id_pair_repeats_more_than_chance_allows(seen):
    per_port = Counter(port for port, _ in seen)
    expected = sum(k * (k - 1) / 2 for k in per_port.values()) / IDS  # pairs of draws on one port that agree
    repeats = sum(n - 1 for n in Counter(seen).values() if n > 1)
    assert repeats <= 3 * expected + 10, (repeats, expected)


def test_ids_are_uniform_and_unordered(seen):
    ids = [qid for _, qid in seen]
    expected_distinct = IDS * (1 - math.exp(-len(ids) / IDS))  # n uniform draws from 65536
    assert len(set(ids)) >= 0.8 * expected_distinct
    buckets = Counter(qid >> 12 for qid in ids)  # 16 ranges of 4096 IDs: ~625 each, sd ~24
    assert all(0.7 * len(ids) / 16 <= buckets[b] <= 1.3 * len(ids) / 16 for b in range(16)), buckets
    by_port: dict[int, list[int]] = {}
    for port, qid in seen:
        by_port.setdefault(port, []).append(qid)
    steps = sum(1 for q in by_port.values() for a, b in zip(q, q[1:]) if (b - a) % IDS == 1)
    assert steps <= 0.01 * len(ids)  # a counter would make nearly every step +1
