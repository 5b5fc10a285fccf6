#!/usr/bin/env python3
"""The Redis shared tier's performance figures, measured side by side.

1. Cache-hit throughput with HEIMDALL_REDIS_URL set vs unset: two Heimdall
   instances (1 worker each) on the same NSD, both warmed with the same 1,000
   names, `dnsperf -c 20 -T 1 -l SECONDS` rounds alternating between them;
   medians and the ratio (target: within 5 %, since local hits never touch Redis).
2. Miss latency of a cold instance: names already in Redis (stored by a
   neighbour) vs names only its upstream knows; one query at a time from
   dnspython, percentiles over --names names each; once with NSD on
   loopback, once behind a relay adding --upstream-delay-ms (a distant
   upstream, as in production).

Usage: .venv/bin/python scripts/bench_redis.py [--seconds 5] [--rounds 3] [--names 1000]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query

from tools.nsd import LocalUpstream, free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from heimdall_server import HeimdallProcess  # noqa: E402
from redis_fixture import RedisServer  # noqa: E402


REDIS_DOWN_EVENTS: list[str] = []  # "redis unavailable" lines from every node: a noisy run


def node(upstream: str, redis_url: str = "") -> HeimdallProcess:
    """A started `heimdall serve` (1 worker) forwarding to `upstream`, Redis tier on if `redis_url`."""
    env = {"HEIMDALL_REDIS_URL": redis_url} if redis_url else {}
    return HeimdallProcess([upstream], env=env).start()


def stop(proc: HeimdallProcess) -> None:
    proc.stop()
    REDIS_DOWN_EVENTS.extend(line for line in proc.log.splitlines() if "unavailable" in line)
    if proc.log_path:
        proc.log_path.unlink(missing_ok=True)


def delay_relay(listen_port: int, target: tuple[str, int], delay: float) -> None:
    """UDP relay that holds every query `delay` seconds: a distant upstream on loopback.

    (This kernel has no netem qdisc, so the delay is added in user space.)
    """
    import asyncio

    class Relay(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            loop = asyncio.get_running_loop()
            loop.call_later(delay, lambda: loop.create_task(self.forward(data, addr)))

        async def forward(self, data, addr):
            loop = asyncio.get_running_loop()
            fut = loop.create_future()

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, reply, _addr):
                    if not fut.done():
                        fut.set_result(reply)

            transport, _ = await loop.create_datagram_endpoint(Back, remote_addr=target)
            try:
                transport.sendto(data)
                self.transport.sendto(await asyncio.wait_for(fut, 3), addr)
            except asyncio.TimeoutError:
                pass
            finally:
                transport.close()

    async def serve():
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Relay, local_addr=("127.0.0.1", listen_port))
        await asyncio.Event().wait()

    asyncio.run(serve())


def dnsperf_qps(port: int, names: Path, seconds: float) -> float:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(names), "-l", str(seconds),
           "-c", "20", "-T", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    found = re.search(r"Queries per second:\s+([\d.]+)", out)
    if not found:
        raise SystemExit(f"dnsperf gave no result:\n{out}")
    return float(found.group(1))


def ask_all(port: int, names: list[str]) -> list[float]:
    """Latency (ms) of each name, asked one at a time; raises on a failed answer."""
    out = []
    for name in names:
        query = dns.message.make_query(name, "A")
        t0 = time.perf_counter()
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
        out.append((time.perf_counter() - t0) * 1000)
        if not reply.answer:
            raise SystemExit(f"no answer for {name}: {reply}")
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def throughput(up: LocalUpstream, redis: RedisServer, seconds: float, rounds: int, tmp: Path) -> dict:
    names = [f"hit{i}.bench.test." for i in range(1000)]
    data = tmp / "hits.txt"
    data.write_text("".join(f"{n} A\n" for n in names))
    plain, shared = node(up.addr), node(up.addr, redis.url)
    try:
        for proc in (plain, shared):
            ask_all(proc.port, names)
            dnsperf_qps(proc.port, data, 1)                  # warm-up pass
        qps: dict[str, list[float]] = {"without": [], "with": []}
        client = redis.client()
        before = client.info("stats")["total_commands_processed"]
        for _ in range(rounds):
            qps["without"].append(dnsperf_qps(plain.port, data, seconds))
            qps["with"].append(dnsperf_qps(shared.port, data, seconds))
        redis_commands = client.info("stats")["total_commands_processed"] - before - 1  # not our INFO
    finally:
        stop(plain)
        stop(shared)
    med = {k: statistics.median(v) for k, v in qps.items()}
    return {"qps": qps, "median": med, "ratio": med["with"] / med["without"],
            "redis_commands_during_hits": redis_commands}


def miss_latency(upstream: str, redis: RedisServer, count: int, tag: str) -> dict:
    names = [f"cold{i}.{tag}.bench.test." for i in range(count)]
    warm = node(upstream, redis.url)
    try:
        ask_all(warm.port, names)                            # the neighbour fills Redis
    finally:
        stop(warm)
    client = redis.client()
    before = client.dbsize()
    for _ in range(100):
        if client.dbsize() >= before + count:
            break
        time.sleep(0.05)
    cold_redis, cold_plain = node(upstream, redis.url), node(upstream)
    try:
        from_redis = ask_all(cold_redis.port, names)
        from_upstream = ask_all(cold_plain.port, names)
        local_hits = ask_all(cold_plain.port, names)         # reference: local cache hits
    finally:
        stop(cold_redis)
        stop(cold_plain)
    return {k: {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99), "mean": statistics.fmean(v)}
            for k, v in (("redis_hit", from_redis), ("upstream_miss", from_upstream),
                         ("local_hit", local_hits))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--upstream-delay-ms", type=float, default=20.0,
                        help="also measure misses through a relay adding this delay (a distant upstream)")
    args = parser.parse_args()
    import multiprocessing

    with tempfile.TemporaryDirectory(prefix="heimdall-bench-redis-") as tmp, LocalUpstream() as up:
        redis = RedisServer().start()
        relay_port = free_port()
        relay = multiprocessing.Process(target=delay_relay, daemon=True,
                                        args=(relay_port, ("127.0.0.1", up.port), args.upstream_delay_ms / 1000))
        relay.start()
        try:
            tp = throughput(up, redis, args.seconds, args.rounds, Path(tmp))
            lat = {"loopback NSD": miss_latency(up.addr, redis, args.names, "near")}
            if args.upstream_delay_ms > 0:
                lat[f"NSD +{args.upstream_delay_ms:g} ms"] = miss_latency(
                    f"127.0.0.1:{relay_port}", redis, args.names, "far")
        finally:
            relay.terminate()
            relay.join(5)
            redis.cleanup()
    print(f"cache-hit qps, dnsperf -c 20 -T 1 -l {args.seconds:g}, 1,000 names, {args.rounds} rounds:")
    print(f"  without Redis  {tp['median']['without']:>9.0f}  {tp['qps']['without']}")
    print(f"  with Redis     {tp['median']['with']:>9.0f}  {tp['qps']['with']}")
    print(f"  ratio with/without {tp['ratio']:.3f}; Redis commands during the hit rounds: "
          f"{tp['redis_commands_during_hits']}")
    print(f"cold-instance latency (ms), {args.names} names, one query at a time:")
    for where, table in lat.items():
        print(f" upstream = {where}")
        for k, v in table.items():
            print(f"  {k:<14} p50 {v['p50']:.3f}  p90 {v['p90']:.3f}  p99 {v['p99']:.3f}  mean {v['mean']:.3f}")
    print(f"redis marked down during the run: {len(REDIS_DOWN_EVENTS)} time(s)")
    for line in REDIS_DOWN_EVENTS[:5]:
        print("  " + line)
    print(json.dumps({"throughput": tp, "miss_latency_ms": lat, "redis_down_events": len(REDIS_DOWN_EVENTS)}))


if __name__ == "__main__":
    main()
