#!/usr/bin/env python3
"""A random-subdomain flood at a server, beside clients asking cached names (loopback only).

Starts NSD (bench.test, example.test) and a silent upstream for victim.test (it counts what it
receives and answers nothing: the worst case of water torture), then the server under test
forwarding victim.test to the silent one and the rest to NSD: Heimdall (`heimdall serve` with
HEIMDALL_FORWARD_ZONES) or Unbound (a forward-zone). The project's load generator offers
--flood-qps of unique names under victim.test (open loop: it keeps sending whatever the server
does with them) while it also asks 1,000 cached names from 20 clients at --legit-qps; prints
what the legitimate clients lost, their p99, the server's RSS and how many queries the
victim's servers received.

    .venv/bin/python scripts/flood.py --server heimdall --flood-qps 20000 --seconds 10
    .venv/bin/python scripts/flood.py --server unbound  --flood-qps 20000 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.loadgen import LoadConfig, run_load  # noqa: E402
from tools.nsd import LocalUpstream  # noqa: E402
from tools.peers import HeimdallServer, UnboundServer  # noqa: E402


class Silent:
    """victim.test's servers: a UDP socket that counts every query and answers none."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.received = 0
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sock.recv(512)
                self.received += 1
            except socket.timeout:
                pass


class UnboundWithVictim(UnboundServer):
    def __init__(self, upstream: str, victim: str) -> None:
        super().__init__(upstream)
        self.victim = victim

    def config_text(self) -> str:
        host, port = self.victim.split(":")
        return super().config_text() + f'forward-zone:\n  name: "victim.test."\n  forward-addr: {host}@{port}\n'


def flood(server: str, qps: int, seconds: float, out: Path) -> subprocess.Popen:
    """The project's load generator, open loop: it keeps sending whatever the server does with the
    queries (dnsperf stops sending when its outstanding queries pile up at a server that holds them)."""
    return subprocess.Popen([sys.executable, "-m", "tools.cli", "load", "--test-type", "cache-miss", "--zone",
                             "victim.test", "--server", server, "--qps", str(qps), "--duration", str(seconds),
                             "--warmup", "0", "--clients", "200", "--timeout", "1000", "--quiet", "--json", str(out)],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=("heimdall", "unbound"), default="heimdall")
    ap.add_argument("--flood-qps", type=int, default=20000)
    ap.add_argument("--legit-qps", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--per-zone", type=int, default=100, help="HEIMDALL_MAX_INFLIGHT_PER_ZONE")
    args = ap.parse_args()
    silent = Silent()
    with tempfile.TemporaryDirectory(prefix="heimdall-flood-") as tmp, LocalUpstream() as nsd:
        if args.server == "heimdall":
            target = HeimdallServer(nsd.addr, env={"HEIMDALL_FORWARD_ZONES": f"victim.test={silent.addr}",
                                                   "HEIMDALL_MAX_INFLIGHT_PER_ZONE": str(args.per_zone)})
        else:
            target = UnboundWithVictim(nsd.addr, silent.addr)
        with target:
            proc = psutil.Process(target.pid)
            run_load(LoadConfig(test_type="cache-hit", server=target.addr, duration=1, warmup=0.5, clients=20))
            rss0 = proc.memory_info().rss
            attacker = flood(target.addr, args.flood_qps, args.seconds, Path(tmp) / "flood.json")
            time.sleep(0.5)
            legit = run_load(LoadConfig(test_type="cache-hit", server=target.addr, duration=args.seconds - 1.5,
                                        warmup=0.5, clients=20, qps=args.legit_qps))
            rss = proc.memory_info().rss
            attacker.wait(timeout=args.seconds + 60)
            attack = json.loads((Path(tmp) / "flood.json").read_text())
    silent.stop.set()
    lost = legit["sent"] - legit["received"]
    print(f"{args.server}: flood {attack['sent']:,} queries ({attack['sent'] / args.seconds:,.0f} q/s) for {args.seconds:g} s, "
          f"answered {attack['received']:,} {attack['rcodes']}; victim's servers received {silent.received:,}")
    print(f"  legitimate clients: {legit['received']:,} of {legit['sent']:,} answered ({100 * lost / legit['sent']:.2f} % "
          f"lost), p50 {legit['latency_us']['p50']:.0f} us, p99 {legit['latency_us']['p99']:.0f} us, "
          f"rcodes {legit['rcodes']}")
    print(f"  server RSS {rss0 / 2**20:.1f} -> {rss / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
