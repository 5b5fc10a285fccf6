#!/usr/bin/env python3
"""Soak a running DNS server with random and mutated packets (loopback only).

Sends COUNT packets: a third pure random bytes, two thirds valid queries with
random bit flips, truncations, inflated section counts and compression-pointer
loops. Every --probe-every packets it asks a real question and requires the
right answer; it samples the server's RSS (psutil) and fails if the server
stops answering or its memory grows more than --max-rss-growth-mb after the
first tenth of the run.

    scripts/soak.py --server 127.0.0.1:1053 --pid PID --count 1000000

Exit 0 when the server survived with flat memory, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import psutil


@dataclass
class SoakResult:
    sent: int = 0
    probes: int = 0
    probe_failures: int = 0
    replies_to_garbage: int = 0
    rss_mb: list[float] = field(default_factory=list)


def mutate(packet: bytes, rng: random.Random) -> bytes:
    """One mutation of a valid query, chosen to hit the parser's edge cases."""
    kind = rng.randrange(6)
    b = bytearray(packet)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        b = b[: rng.randrange(len(b))]
    elif kind == 2:  # section counts larger than the packet
        struct.pack_into("!HHHH", b, 4, *(rng.randrange(65536) for _ in range(4)))
    elif kind == 3:  # compression pointer loop / forward / out of range in the question
        b[12:14] = struct.pack("!H", 0xC000 | rng.choice([12, 13, len(b), 0x3FFF]))
    elif kind == 4:  # label longer than 63, name longer than 255
        b = b[:12] + bytes([rng.randint(64, 255)]) + bytes(rng.randrange(256) for _ in range(70)) + b[-4:]
    else:  # opcode / flags garbage, QR=0 kept so the server must parse it
        b[2] = rng.randrange(256) & 0x7F
        b[3] = rng.randrange(256)
    return bytes(b)


def probe(sock: socket.socket, server: tuple[str, int], rng: random.Random) -> bool:
    """A real question must still get the right answer."""
    q = dns.message.make_query(f"soak-{rng.randrange(1000)}.bench.test", "A")
    sock.sendto(q.to_wire(), server)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            return False
        try:
            r = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - an answer to earlier garbage
            continue
        if r.id == q.id and r.question == q.question:
            return r.rcode() == dns.rcode.NOERROR and bool(r.answer)
    return False


def drain(sock: socket.socket) -> int:
    n = 0
    sock.setblocking(False)
    try:
        while True:
            sock.recvfrom(65535)
            n += 1
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return n


def soak(server: tuple[str, int], pid: int | None, count: int, probe_every: int, seed: int,
         rate: int) -> SoakResult:
    rng = random.Random(seed)
    proc = psutil.Process(pid) if pid else None
    res = SoakResult()
    base = [dns.message.make_query(f"w{i}.bench.test", t).to_wire() for i, t in
            enumerate(["A", "AAAA", "TXT", "MX", "ANY"])]
    fam = socket.AF_INET6 if ipaddress.ip_address(server[0]).version == 6 else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    start = time.monotonic()
    for i in range(count):
        pkt = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))) if i % 3 == 0 \
            else mutate(rng.choice(base), rng)
        sock.sendto(pkt, server)
        res.sent += 1
        if rate and res.sent % 1000 == 0:  # pace to `rate` packets/s so the socket is not just overflowed
            ahead = res.sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if (i + 1) % probe_every == 0:
            res.replies_to_garbage += drain(sock)
            res.probes += 1
            if not probe(sock, server, rng):
                res.probe_failures += 1
            if proc:
                res.rss_mb.append(proc.memory_info().rss / 2**20)
            if (i + 1) % (probe_every * 20) == 0:
                print(f"  {i + 1:>9} sent, {res.probe_failures} failed probes, "
                      f"rss {res.rss_mb[-1] if res.rss_mb else float('nan'):.1f} MB", flush=True)
    res.replies_to_garbage += drain(sock)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="127.0.0.1:1053")
    ap.add_argument("--pid", type=int, help="server pid, to watch its memory")
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--probe-every", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=20000, help="packets per second (0 = as fast as possible)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-rss-growth-mb", type=float, default=20.0)
    a = ap.parse_args()
    host, _, port = a.server.rpartition(":")
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        print("error: soak targets loopback servers only", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    r = soak((host.strip("[]"), int(port)), a.pid, a.count, a.probe_every, a.seed, a.rate)
    growth = (r.rss_mb[-1] - r.rss_mb[len(r.rss_mb) // 10]) if len(r.rss_mb) >= 10 else 0.0
    print(f"sent {r.sent} packets in {time.monotonic() - t0:.0f}s; {r.probes} probes, "
          f"{r.probe_failures} failed; {r.replies_to_garbage} replies to garbage; "
          f"rss growth after warm-up {growth:+.1f} MB")
    ok = r.probe_failures == 0 and growth <= a.max_rss_growth_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
