"""The transports of a side-by-side run: which server serves which, and a row per (server, transport).

A server started once is measured over each transport asked for as a row
of its own, named `NAME/TRANSPORT` ("unbound/dot"; the UDP row keeps the
plain name, so a UDP-only run reads as before). Rows of one server share
its process, so CPU and memory figures are that server's. A server that
cannot serve a transport (dnsmasq has no DoT/DoH, the bare responder and
servers given by address are measured over UDP only) is skipped for it
with a note. DoT and DoH use a throwaway CA the run makes (tools/testpki.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tools.sidebyside.contestants import Contestant
from tools.stream_clients import TRANSPORTS
from tools.testpki import ServerCert, make_pki

ENCRYPTED = ("dot", "doh")
SERVES = {"heimdall": TRANSPORTS, "unbound": TRANSPORTS, "dnsmasq": ("udp", "tcp"), "pdns-recursor": ("udp", "tcp"),
          "dnsdist": ("udp", "tcp"), "bare": ("udp",),
          "external": ("udp",)}


def serves(kind: str) -> tuple[str, ...]:
    """The transports a kind of contestant can be measured over."""
    return SERVES.get(kind, ("udp",))


def why_not(kind: str, transport: str) -> str:
    if kind in ("bare", "external"):
        return f"{'the bare responder' if kind == 'bare' else 'a server given by address'} is measured over UDP only"
    return f"{kind} does not serve {transport}"


def lab_pki(transports: tuple[str, ...], work: Path) -> ServerCert | None:
    """A throwaway CA and server certificate when the run measures DoT or DoH."""
    if not set(transports) & set(ENCRYPTED):
        return None
    server, _ = make_pki(work / "pki")
    return server


def transport_rows(c: Contestant, transports: tuple[str, ...], pki: ServerCert | None) -> tuple[list, list]:
    """The rows of one started server, one per transport it serves; and the skips with their reasons."""
    rows: list[Contestant] = []
    skipped: list[dict] = []
    can = serves(c.kind)
    for t in transports:
        if t not in can:
            skipped.append({"peer": c.name, "transport": t, "why": why_not(c.kind, t)})
        elif t == "udp":
            rows.append(c)
        else:
            rows.append(replace(c, name=f"{c.name}/{t}", transport=t, addr=_addr(c, t), rounds=[], extra={},
                                ca_file=str(pki.ca) if pki and t in ENCRYPTED else None,
                                server_name=pki.name if pki and t in ENCRYPTED else None, udp_addr=c.addr))
    return rows, skipped


def _addr(c: Contestant, transport: str) -> str:
    if transport == "tcp":
        return c.addr
    port = c.server.tls_port if transport == "dot" else c.server.https_port
    return f"{c.sockaddr[0]}:{port}"
