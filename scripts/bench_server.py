#!/usr/bin/env python3
"""The server's throughput, memory and CPU targets against Unbound, measured side by side in one run.

1. Cache-hit throughput: Heimdall (1 worker) vs Unbound (1 thread, forwarding
   to the same NSD), `dnsperf -c 20 -T 1` over 1,000 cached names, rounds
   alternating between the two; medians and the ratio (target >= 0.75).
2. Memory: RSS growth per cached entry after filling a fresh Heimdall with
   --fill unique names (target <= 400 bytes).
3. CPU: share of one core Heimdall uses at `dnsperf -Q 10000` cache hits
   (target <= 20 %), with Unbound's at the same rate for reference.

Usage: .venv/bin/python scripts/bench_server.py [--duration 10] [--rounds 3] [--fill 200000]
Prints a table and one JSON line; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from tools.nsd import LocalUpstream, free_port, wait_for_dns

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    heimdall_qps: list[float] = field(default_factory=list)
    unbound_qps: list[float] = field(default_factory=list)
    ratio_median: float = 0.0
    bytes_per_entry: float = 0.0
    entries: int = 0
    heimdall_cpu_pct_at_10k: float = 0.0
    unbound_cpu_pct_at_10k: float = 0.0
    heimdall_achieved_qps_at_10k: float = 0.0
    bare_uvloop_cpu_pct_at_10k: float = 0.0


def dnsperf(port: int, names: Path, seconds: float, extra: list[str]) -> dict[str, float]:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(names), "-l", str(seconds), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not qps:
        raise SystemExit(f"dnsperf gave no result:\n{out}")
    return {"qps": float(qps.group(1)), "completed": float(done.group(1)) if done else 0.0,
            "lost": float(lost.group(1)) if lost else 0.0}


def write_names(path: Path, count: int, prefix: str) -> Path:
    path.write_text("".join(f"{prefix}{i}.bench.test A\n" for i in range(count)))
    return path


def start_heimdall(upstream: LocalUpstream, workdir: Path, capacity: int) -> tuple[subprocess.Popen, int]:
    """Heimdall with one worker on a free port (retried: on a shared machine a free port can be taken)."""
    for attempt in range(3):
        port = free_port()
        env = dict(os.environ, HEIMDALL_BIND_ADDR=f"127.0.0.1:{port}", HEIMDALL_UPSTREAM_SERVERS=upstream.addr,
                   HEIMDALL_CACHE_CAPACITY=str(capacity), HEIMDALL_WORKER_THREADS="1",
                   HEIMDALL_HTTP_BIND_ADDR="disabled")
        log = workdir / f"heimdall-{port}.log"
        proc = subprocess.Popen([sys.executable, "-m", "heimdall", "serve"], env=env, cwd=ROOT,
                                stderr=open(log, "wb"), start_new_session=True)
        try:
            wait_for_dns("127.0.0.1", port, proc=proc)
            return proc, port
        except Exception as exc:  # noqa: BLE001
            stop(proc)
            print(f"heimdall did not start ({exc}): {log.read_text(errors='replace').strip()[-300:]}",
                  file=sys.stderr)
    raise SystemExit("heimdall did not start three times")


def start_unbound(upstream: LocalUpstream, workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = workdir / "unbound.conf"
    conf.write_text(
        "server:\n"
        f"  interface: 127.0.0.1@{port}\n  port: {port}\n  num-threads: 1\n"
        "  username: \"\"\n  chroot: \"\"\n  directory: \"" + str(workdir) + "\"\n"
        f"  pidfile: \"{workdir}/unbound.pid\"\n  logfile: \"\"\n  use-syslog: no\n  verbosity: 0\n"
        "  do-not-query-localhost: no\n  module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n"
        "  msg-cache-size: 64m\n  rrset-cache-size: 64m\n  so-reuseport: no\n  do-ip6: no\n"
        "  minimal-responses: no\n  harden-referral-path: no\n  qname-minimisation: no\n"
        "remote-control:\n  control-enable: no\n"
        "forward-zone:\n  name: \".\"\n" f"  forward-addr: {upstream.address}@{upstream.port}\n"
    )
    proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stderr=open(workdir / "unbound.log", "wb"),
                            stdout=subprocess.DEVNULL, start_new_session=True)
    wait_for_dns("127.0.0.1", port, qname="www.example.test.", proc=proc)
    return proc, port


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


BARE_RESPONDER = """
import socket, sys, asyncio, uvloop
reply = bytes.fromhex("0000818000010001000000000568697430300562656e636804746573740000010001c00c000100010000012c0004c0000201")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[1]))); s.setblocking(False)
def cb():
    try:
        d, a = s.recvfrom(4096)
    except BlockingIOError:
        return
    s.sendto(d[:2] + reply[2:], a)
async def main():
    asyncio.get_running_loop().add_reader(s.fileno(), cb)
    await asyncio.sleep(3600)
uvloop.run(main())
"""


def start_bare() -> tuple[subprocess.Popen, int]:
    """The floor of Python + uvloop: a responder that only patches the ID of one stored reply."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_RESPONDER, str(port)], start_new_session=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # its canned reply fools dnspython's checks
        s.settimeout(0.2)
        for _ in range(50):
            s.sendto(b"\x12\x34" + bytes(10), ("127.0.0.1", port))
            try:
                s.recv(512)
                return proc, port
            except OSError:
                continue
    stop(proc)
    raise SystemExit("the bare responder did not start")


def cpu_share(pid: int, port: int, names: Path, seconds: float) -> tuple[float, float]:
    """(percent of one core the process used, achieved qps) at 10,000 q/s of cache hits."""
    p = psutil.Process(pid)
    before, t0 = p.cpu_times(), time.monotonic()
    res = dnsperf(port, names, seconds, ["-c", "20", "-T", "1", "-Q", "10000"])
    after, t1 = p.cpu_times(), time.monotonic()
    used = (after.user + after.system) - (before.user + before.system)
    return 100.0 * used / (t1 - t0), res["qps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds (0 = skip)")
    ap.add_argument("--fill", type=int, default=200_000, help="unique names for the memory measurement (0 = skip)")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--bare", action="store_true",
                    help="also measure a bare uvloop ID-patching responder's CPU at 10k q/s (the platform floor)")
    args = ap.parse_args()
    for tool in ("dnsperf", "unbound", "nsd"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"error: {tool} is not installed (run scripts/setup.sh)", file=sys.stderr)
            return 3
    res = Result()
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    heim = unb = filler = None
    try:
        with LocalUpstream() as up:
            heim, hport = start_heimdall(up, workdir, capacity=100_000)
            unb, uport = start_unbound(up, workdir)
            names = write_names(workdir / "names.txt", 1000, "hit")
            for port in (hport, uport):  # warm: every name once, then a short pass
                dnsperf(port, names, 2, ["-n", "1", "-c", "1", "-q", "50"])
            for r in range(args.rounds):
                order = [("heimdall", hport), ("unbound", uport)]
                if r % 2:
                    order.reverse()
                for name, port in order:
                    qps = dnsperf(port, names, args.duration, ["-c", "20", "-T", "1"])["qps"]
                    (res.heimdall_qps if name == "heimdall" else res.unbound_qps).append(qps)
                    print(f"round {r + 1}: {name:8s} {qps:10.0f} q/s", flush=True)
            if args.rounds:
                res.ratio_median = statistics.median(res.heimdall_qps) / statistics.median(res.unbound_qps)
            if not args.skip_cpu:
                res.heimdall_cpu_pct_at_10k, res.heimdall_achieved_qps_at_10k = cpu_share(
                    heim.pid, hport, names, args.duration)
                res.unbound_cpu_pct_at_10k, _ = cpu_share(unb.pid, uport, names, args.duration)
                if args.bare:
                    bare, bport = start_bare()
                    try:
                        res.bare_uvloop_cpu_pct_at_10k, _ = cpu_share(bare.pid, bport, names, args.duration)
                    finally:
                        stop(bare)
            stop(heim)
            heim = None
            stop(unb)
            unb = None
            if args.fill:
                filler, fport = start_heimdall(up, workdir, capacity=args.fill + 10)
                fnames = write_names(workdir / "fill.txt", args.fill, "fill")
                proc = psutil.Process(filler.pid)
                rss0 = proc.memory_info().rss
                out = dnsperf(fport, fnames, 600, ["-n", "1", "-c", "20", "-T", "1", "-q", "200"])
                res.entries = int(out["completed"])
                res.bytes_per_entry = (proc.memory_info().rss - rss0) / max(1, res.entries)
    finally:
        for p in (heim, unb, filler):
            stop(p)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    if args.rounds:
        print(f"cache-hit q/s (median of {args.rounds}): heimdall {statistics.median(res.heimdall_qps):.0f}, "
              f"unbound {statistics.median(res.unbound_qps):.0f}, ratio {res.ratio_median:.2f} (target >= 0.75)")
    if args.fill:
        print(f"memory: {res.bytes_per_entry:.0f} bytes RSS per cached entry over {res.entries} entries "
              f"(target <= 400)")
    if not args.skip_cpu:
        print(f"cpu at 10k q/s cache hits: heimdall {res.heimdall_cpu_pct_at_10k:.1f}% of one core "
              f"(achieved {res.heimdall_achieved_qps_at_10k:.0f} q/s), unbound {res.unbound_cpu_pct_at_10k:.1f}% "
              f"(target <= 20%)" + (f"; bare uvloop responder {res.bare_uvloop_cpu_pct_at_10k:.1f}%" if args.bare else ""))
    print(json.dumps({"bench": "server", "version": 1, **asdict(res)}))
    ok = (not args.rounds) or res.ratio_median >= 0.75
    ok &= (not args.fill) or res.bytes_per_entry <= 400
    ok &= args.skip_cpu or res.heimdall_cpu_pct_at_10k <= 20
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
