"""The servers of a side-by-side run: start, describe and stop them (process control only)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.reference import ProgramResponder
from tools.resources import process_tree
from tools.sidebyside.options import KNOWN_PEERS, CompareOptions


@dataclass
class Contestant:
    name: str
    kind: str                       # heimdall | unbound | dnsmasq | external
    addr: str
    pid: int | None
    threads: int
    server: Any = None              # the peers.PeerServer we started (None for external)
    rounds: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    transport: str = "udp"          # how the load reaches it: udp, tcp, dot or doh
    ca_file: str | None = None      # dot/doh: the run's throwaway CA
    server_name: str | None = None  # dot/doh: the name in the server's certificate
    udp_addr: str | None = None     # where its cache is primed over UDP (None: addr)

    @property
    def slug(self) -> str:
        """The name as it may appear in a file name or a DNS label ("unbound/dot" -> "unbound-dot")."""
        return self.name.replace("/", "-")

    @property
    def sockaddr(self) -> tuple[str, int]:
        host, _, port = self.addr.rpartition(":")
        return host.strip("[]"), int(port)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """`NAME:HEIMDALL_X=Y[,HEIMDALL_Z=W]` (or `NAME:PYTHONPATH=DIR`, another checkout) -> (NAME, env)."""
    vname, sep, pairs = spec.partition(":")
    kv = dict(p.partition("=")[::2] for p in pairs.split(",") if p)
    if not sep or not vname or vname == "heimdall" or not kv or any(
            not (k.startswith("HEIMDALL_") or k == "PYTHONPATH") or not v for k, v in kv.items()):
        raise ToolError(f"bad --variant {spec!r}: expected NAME:HEIMDALL_X=Y[,HEIMDALL_Z=W] "
                        "(or PYTHONPATH=DIR)", EXIT_ENVIRONMENT)
    if "PYTHONPATH" in kv and not (Path(kv["PYTHONPATH"]) / "heimdall" / "__main__.py").is_file():
        raise ToolError(f"bad --variant {spec!r}: {kv['PYTHONPATH']} is not a Heimdall checkout "
                        "(no heimdall/__main__.py there)", EXIT_ENVIRONMENT)
    return vname, kv


def start_contestant(kind: str, name: str, upstream: str, opts: CompareOptions, workers: int,
           env: dict[str, str] | None = None, tls: tuple[str, str] | None = None) -> Contestant:
    """Start one contestant; `env` (a variant's) goes over opts.heimdall_env for Heimdall; with `tls`
    (certificate, key) Heimdall and Unbound also serve DoT and DoH."""
    from tools import peers

    if kind == "heimdall":
        env = {"HEIMDALL_CACHE_CAPACITY": str(opts.cache_entries), **opts.heimdall_env, **(env or {})}
        srv = peers.HeimdallServer(upstream, env=env, workers=workers, tls=tls).start()
    elif kind == "unbound":
        srv = peers.UnboundServer(upstream, threads=workers, cache_entries=opts.cache_entries, tls=tls).start()
    elif kind == "dnsmasq":
        srv = peers.DnsmasqServer(upstream, cache_size=opts.cache_entries).start()
    elif kind == "pdns-recursor":
        srv = peers.PdnsRecursorServer(upstream, threads=workers, cache_entries=opts.cache_entries).start()
    elif kind == "dnsdist":
        srv = peers.DnsdistServer(upstream, cache_entries=opts.cache_entries).start()
    else:
        raise ToolError(f"unknown peer {kind!r}: choose from {', '.join(KNOWN_PEERS)}", EXIT_ENVIRONMENT)
    threads = 1 if kind in ("dnsmasq", "dnsdist") else workers
    return Contestant(name, kind, srv.addr, srv.pid, threads, server=srv)


BARE_RESPONDER = r"""
import asyncio, socket, sys, uvloop
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.setblocking(False)
FLAGS, COUNTS = b"\x81\x80", b"\x00\x01\x00\x01\x00\x00\x00\x00"
ANSWER = bytes.fromhex("c00c000100010000012c0004c0000201")
recvfrom, sendto = s.recvfrom, s.sendto
def readable():
    try:
        d, a = recvfrom(4096)
    except BlockingIOError:
        return
    sendto(d[:2] + FLAGS + COUNTS + d[12:] + ANSWER, a)
async def main():
    asyncio.get_running_loop().add_reader(s.fileno(), readable)
    await asyncio.sleep(1e9)
uvloop.run(main())
"""


class BareResponder(ProgramResponder):
    """The Python + uvloop floor: echo the question with one canned A record (no cache, no parsing)."""

    program = BARE_RESPONDER


def installed(kind: str) -> bool:
    binary = {"unbound": "unbound", "dnsmasq": "dnsmasq", "pdns-recursor": "pdns_recursor", "dnsdist": "dnsdist"}[kind]
    return bool(shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"))


def external_contestants(servers: list[str], pids: list[int]) -> list[Contestant]:
    out = []
    for i, spec in enumerate(servers):
        name, _, addr = spec.rpartition("=")
        name = name or f"server{i + 1}"
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ToolError(f"bad --server {spec!r}: expected [NAME=]HOST:PORT", EXIT_ENVIRONMENT)
        pid = pids[i] if i < len(pids) else None
        out.append(Contestant(name, "external", addr, pid, 0))
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of the process and its children."""
    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001  (gone meanwhile)
            pass
    return total
