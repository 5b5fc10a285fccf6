#!/usr/bin/env python3
"""What a DoQ listener spends on a connection it turns away, against one it starts a handshake for.

Two Heimdall DoQ listeners with HEIMDALL_TCP_MAX_CONNECTIONS=4: at one, four
stalled handshakes (first flights that never go on) hold every place, so each
new client's first Initial is refused (CONNECTION_REFUSED, before any TLS
work); the other has its limit raised out of reach, so each first Initial
starts a handshake (key exchange, certificate signature) that the client never
finishes. Each round sends `--initials` new clients' first flights, 2 ms
apart, to each listener in turn and reads the listener's CPU time: the figure
is server CPU per first Initial. Medians over rounds; prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from heimdall import doqwire
from tools.nsd import LocalUpstream, free_port
from tools.peers import HeimdallServer
from tools.resources import tree_cpu_seconds
from tools.testpki import ServerCert, make_pki

HELD = 4  # the refusing listener's connection limit, all of it taken by stalled handshakes
GAP_S = 0.002


def first_flight(port: int, name: str) -> list[bytes]:
    """A new client's first datagrams (its Initial with the ClientHello), made and not sent."""
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=[doqwire.ALPN],
                                                          server_name=name))
    quic.connect(("127.0.0.1", port), now=time.monotonic())
    return [data for data, _ in quic.datagrams_to_send(now=time.monotonic())]


def listener(upstream: str, cert: ServerCert, limit: int) -> tuple[HeimdallServer, int]:
    port = free_port()
    srv = HeimdallServer(upstream, env={"HEIMDALL_QUIC_BIND_ADDR": f"127.0.0.1:{port}",
                                        "HEIMDALL_TLS_CERT_FILE": str(cert.cert),
                                        "HEIMDALL_TLS_KEY_FILE": str(cert.key),
                                        "HEIMDALL_TCP_IDLE_TIMEOUT": "300",  # stalled handshakes stay
                                        "HEIMDALL_TCP_MAX_CONNECTIONS": str(limit)})
    return srv.start(), port


def send_flights(port: int, flights: list[list[bytes]], gap: float) -> int:
    """Each flight from its own socket (a client of its own), `gap` apart; datagrams that came back."""
    socks, back = [], 0
    for flight in flights:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        for data in flight:
            sock.send(data)
        socks.append(sock)
        time.sleep(gap)
    time.sleep(0.5)
    for sock in socks:
        while True:
            try:
                sock.recv(4096)
                back += 1
            except BlockingIOError:
                break
        sock.close()
    return back


def window(srv: HeimdallServer, port: int, n: int, name: str) -> dict:
    flights = [first_flight(port, name) for _ in range(n)]
    cpu0 = tree_cpu_seconds(srv.pid) or 0.0
    back = send_flights(port, flights, GAP_S)
    cpu = (tree_cpu_seconds(srv.pid) or 0.0) - cpu0
    return {"cpu_us_per_initial": round(cpu / n * 1e6, 1), "datagrams_back_per_initial": round(back / n, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--initials", type=int, default=500)
    args = ap.parse_args()
    cert, _ = make_pki(Path(tempfile.mkdtemp(prefix="heimdall-bench-doq-")) / "pki")
    rows: dict[str, list[dict]] = {"refused": [], "handshake": []}
    with LocalUpstream() as nsd:
        refusing, rport = listener(nsd.addr, cert, HELD)
        serving, sport = listener(nsd.addr, cert, 100_000)
        try:
            send_flights(rport, [first_flight(rport, cert.name) for _ in range(HELD)], 0.0)  # every place taken
            for r in range(args.rounds):
                order = [("refused", refusing, rport), ("handshake", serving, sport)]
                for kind, srv, port in order[r % 2:] + order[:r % 2]:
                    res = window(srv, port, args.initials, cert.name)
                    rows[kind].append(res)
                    print(f"round {r + 1} {kind:9s} {res['cpu_us_per_initial']:8.1f} us CPU per first Initial, "
                          f"{res['datagrams_back_per_initial']} datagrams back", flush=True)
        finally:
            refusing.stop()
            serving.stop()
    summary = {k: {"cpu_us_per_initial_median": statistics.median(x["cpu_us_per_initial"] for x in v), "rounds": v}
               for k, v in rows.items()}
    ratio = summary["handshake"]["cpu_us_per_initial_median"] / summary["refused"]["cpu_us_per_initial_median"]
    print(f"\nrefused {summary['refused']['cpu_us_per_initial_median']:.1f} us, handshake begun "
          f"{summary['handshake']['cpu_us_per_initial_median']:.1f} us per first Initial: {ratio:.1f}x")
    print(json.dumps({"rounds": args.rounds, "initials": args.initials, **summary}))


if __name__ == "__main__":
    main()
