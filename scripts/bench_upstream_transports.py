#!/usr/bin/env python3
"""What a cache miss costs when it is forwarded over UDP, TCP, DNS over TLS, HTTPS or QUIC.

One NSD serves bench.test.; one Unbound in front of it serves plain DNS, DoT and
DoH with a certificate from a throwaway CA; one Heimdall per upstream transport
forwards to that Unbound (`127.0.0.1:P`, `tcp://`, `tls://...#name`,
`https://.../dns-query#name`; `quic://` goes to a second Heimdall serving DoQ
in front of that Unbound, with `--transports ...,doq`). Each round asks every Heimdall, in rotated
order, `dnsperf -c 20 -T 1 -n 1` over names no one asked before (every query a
miss for Heimdall and for Unbound), and reads Heimdall's CPU time per answered
query. Medians over rounds, and each transport's ratio to UDP.

Usage: .venv/bin/python scripts/bench_upstream_transports.py [--rounds 3] [--seconds 4]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from tools.dnsperf import dnsperf_binary, parse_summary
from tools.nsd import LocalUpstream, free_port
from tools.peers import HeimdallServer, UnboundServer
from tools.resources import tree_cpu_seconds
from tools.testpki import ServerCert, make_pki

NAME = "dns.heimdall.test"
MISS_RATE_CEILING = 60_000  # names per second of window: the file never runs out


def upstream_urls(ub: UnboundServer) -> dict[str, str]:
    return {"udp": f"127.0.0.1:{ub.port}", "tcp": f"tcp://127.0.0.1:{ub.port}",
            "dot": f"tls://127.0.0.1:{ub.tls_port}#{NAME}",
            "doh": f"https://127.0.0.1:{ub.https_port}/dns-query#{NAME}"}


def doq_listener(stack: contextlib.ExitStack, ub: UnboundServer, cert: ServerCert) -> str:
    """Unbound 1.17 has no DoQ: a Heimdall DoQ listener in front of it is the upstream, its URL returned."""
    port = free_port()
    back = HeimdallServer(ub.addr, env={"HEIMDALL_QUIC_BIND_ADDR": f"127.0.0.1:{port}",
                                        "HEIMDALL_TLS_CERT_FILE": str(cert.cert), "HEIMDALL_TLS_KEY_FILE": str(cert.key)})
    stack.enter_context(back)
    return f"quic://127.0.0.1:{port}#{NAME}"


def miss_window(srv: HeimdallServer, tag: str, seconds: float, work: Path) -> dict:
    """One dnsperf window of unique names against `srv`: q/s, answered, CPU us per answered query."""
    names = work / f"{tag}.txt"
    names.write_text("".join(f"{i}.{tag}.miss.bench.test A\n" for i in range(int(seconds * MISS_RATE_CEILING))))
    assert srv.pid is not None
    cpu0 = tree_cpu_seconds(srv.pid) or 0.0
    out = subprocess.run([dnsperf_binary(), "-s", "127.0.0.1", "-p", str(srv.port), "-d", str(names), "-l",
                          f"{seconds:g}", "-c", "20", "-T", "1", "-n", "1"],
                         capture_output=True, text=True, timeout=seconds + 60)
    cpu = (tree_cpu_seconds(srv.pid) or 0.0) - cpu0
    names.unlink()
    s = parse_summary(out.stdout)
    done = s.get("completed") or 0
    return {"qps": s.get("qps") or 0.0, "answered": done, "lost": s.get("lost"),
            "cpu_us_per_miss": round(cpu / done * 1e6, 1) if done else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--transports", default="udp,tcp,dot,doh")
    args = ap.parse_args()
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    work = Path(tempfile.mkdtemp(prefix="heimdall-bench-up-"))
    server_cert, _ = make_pki(work / "pki")
    rows: dict[str, list[dict]] = {t: [] for t in transports}
    with LocalUpstream() as nsd, UnboundServer(nsd.addr, tls=(str(server_cert.cert), str(server_cert.key))) as ub, \
            contextlib.ExitStack() as stack:
        urls = upstream_urls(ub)
        if "doq" in transports:
            urls["doq"] = doq_listener(stack, ub, server_cert)
        servers = {t: HeimdallServer(ub.addr, env={"HEIMDALL_UPSTREAM_SERVERS": urls[t],
                                                   "HEIMDALL_UPSTREAM_CA_FILE": str(server_cert.ca)}).start()
                   for t in transports}
        try:
            for r in range(args.rounds):
                order = transports[r % len(transports):] + transports[:r % len(transports)]
                for t in order:
                    res = miss_window(servers[t], f"r{r}{t}", args.seconds, work)
                    rows[t].append(res)
                    print(f"round {r + 1} {t:4s} {res['qps']:9,.0f} q/s  {res['cpu_us_per_miss']} us CPU per miss"
                          f"  lost {res['lost']}", flush=True)
        finally:
            for srv in servers.values():
                srv.stop()
    summary = {}
    for t, rs in rows.items():
        cpus = [x["cpu_us_per_miss"] for x in rs if x["cpu_us_per_miss"]]
        summary[t] = {"qps_median": statistics.median(x["qps"] for x in rs),
                      "cpu_us_per_miss_median": round(statistics.median(cpus), 1) if cpus else None, "rounds": rs}
    base = summary.get("udp", {}).get("cpu_us_per_miss_median")
    print(f"\n{'upstream':8s} {'q/s (median)':>14s} {'CPU us/miss':>12s} {'vs UDP':>7s}")
    for t, s in summary.items():
        cpu = s["cpu_us_per_miss_median"]
        ratio = f"{cpu / base:.2f}x" if cpu and base else "-"
        print(f"{t:8s} {s['qps_median']:14,.0f} {cpu if cpu else '-':>12} {ratio:>7s}")
    print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "transports": summary}))


if __name__ == "__main__":
    main()
