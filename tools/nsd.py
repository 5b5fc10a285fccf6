"""A real authoritative DNS server (NSD) on loopback with generated zones.

This machine has no internet, so every cache-miss, mixed and forwarding test
needs an upstream that answers. NSD is the authoritative server the tests,
the benchmarks and `heimdall serve --demo` all start; its zones:

* ``bench.test.``   wildcard A/AAAA at the apex: any name under it exists, so
  load generators can ask unique names (cache-miss) and a fixed set (cache-hit).
* ``example.test.`` hand-made records for behaviour tests: A/AAAA, CNAME, MX,
  a 1-second TTL, a one-week TTL, a TXT set too large for UDP (needs TCP), a
  medium TXT set (fits EDNS, not 512 bytes), a wildcard under ``wild``, and
  NXDOMAIN/NODATA with an SOA whose minimum is 60 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tools.errors import EXIT_ENVIRONMENT, ToolError

BENCH_ZONE = "bench.test."
EXAMPLE_ZONE = "example.test."
NEGATIVE_TTL = 60  # SOA minimum of both zones

_SOA = "@ 3600 IN SOA ns1 hostmaster 2024010101 3600 600 86400 {minimum}\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n"


def bench_zone_text() -> str:
    return f"$ORIGIN {BENCH_ZONE}\n$TTL 3600\n" + _SOA.format(minimum=NEGATIVE_TTL) + (
        "* 3600 IN A 192.0.2.1\n* 3600 IN AAAA 2001:db8::1\n"
        "* 3600 IN TXT \"heimdall bench\"\n"
    )


def example_zone_text() -> str:
    lines = [f"$ORIGIN {EXAMPLE_ZONE}", "$TTL 300", _SOA.format(minimum=NEGATIVE_TTL)]
    lines += [
        "www IN A 192.0.2.10",
        "www IN AAAA 2001:db8::10",
        "alias IN CNAME www",
        "mail IN MX 10 www",
        "short 1 IN A 192.0.2.11",
        "long 604800 IN A 192.0.2.12",
        "*.wild IN A 192.0.2.20",
        "multi IN A 192.0.2.31",
        "multi IN A 192.0.2.32",
        "multi IN A 192.0.2.33",
    ]
    chunk = "x" * 200
    lines += [f'big IN TXT "{i:03d}{chunk}"' for i in range(40)]      # ~8.5 KB: TCP only
    lines += [f'medium IN TXT "{i:03d}{chunk}"' for i in range(5)]    # ~1.1 KB: EDNS only
    return "\n".join(lines) + "\n"


ZONES = {BENCH_ZONE: bench_zone_text, EXAMPLE_ZONE: example_zone_text}


def free_port(address: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `address` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((address, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((address, port))
                except OSError:
                    continue
            return port
    raise ToolError("no free port on loopback", EXIT_ENVIRONMENT)


def wait_for_dns(address: str, port: int, qname: str = "ns1.example.test.", timeout: float = 10.0,
                 proc: subprocess.Popen | None = None) -> None:
    """Poll with real queries until the server answers anything, or raise ToolError."""
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ToolError(f"DNS server on {address}:{port} exited with status {proc.returncode}")
        try:
            dns.query.udp(dns.message.make_query(qname, "A"), address, port=port, timeout=0.3)
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    raise ToolError(f"DNS server on {address}:{port} did not answer within {timeout:.0f}s")


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when this process dies, even by SIGKILL.

    Without it an NSD started by a test or by `heimdall serve --demo` that was
    SIGKILLed outlives it (NSD runs in its own session, so no terminal signal
    reaches it either). Linux PR_SET_PDEATHSIG; a no-op elsewhere. Linux fires it
    when the *thread* that started the child ends, so start tied children from a
    thread that lives as long as they should (every caller here uses the main thread).
    """
    parent = os.getpid()

    def arm() -> None:
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


@dataclass
class LocalUpstream:
    """NSD serving the generated zones on address:port, in its own work dir.

    `tied`: NSD stops when the process that started it dies (False for
    `heimdall-tools upstream start`, whose NSD outlives the command).
    """

    port: int = 0
    address: str = "127.0.0.1"
    workdir: Path | None = None
    tied: bool = True
    zones: dict[str, Callable[[], str]] = field(default_factory=lambda: dict(ZONES))  # origin -> zone text
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    @property
    def addr(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def write_config(self) -> Path:
        if self.port == 0:
            self.port = free_port(self.address)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="heimdall-nsd-"))
            self._own_dir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        zone_blocks = []
        for origin, text in self.zones.items():
            name = origin.rstrip(".")
            (self.workdir / f"{name}.zone").write_text(text())
            zone_blocks.append(f"zone:\n  name: {name}\n  zonefile: {name}.zone\n")
        d = self.workdir
        conf = d / "nsd.conf"
        conf.write_text(
            "server:\n"
            f"  ip-address: {self.address}@{self.port}\n"
            "  server-count: 1\n  username: \"\"\n  chroot: \"\"\n"
            f"  zonesdir: \"{d}\"\n  database: \"\"\n"
            f"  zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n"
            f"  xfrdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  logfile: \"{d}/nsd.log\"\n"
            "  hide-version: yes\n  verbosity: 0\n  tcp-count: 512\n  reuseport: no\n"
            "  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n"  # NSD rate-limits at 200 q/s by default
            "remote-control:\n  control-enable: no\n" + "".join(zone_blocks)
        )
        return conf

    def start(self, timeout: float = 10.0) -> "LocalUpstream":
        nsd = shutil.which("nsd") or "/usr/sbin/nsd"
        if not os.path.exists(nsd):
            raise ToolError("nsd is not installed: run scripts/setup.sh (apt-get install nsd)")
        conf = self.write_config()
        workdir = self.workdir
        assert workdir is not None  # write_config() sets it
        self.proc = subprocess.Popen([nsd, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(workdir / "nsd.stderr", "wb"),
                                     start_new_session=True,
                                     preexec_fn=die_with_parent() if self.tied else None)
        try:
            wait_for_dns(self.address, self.port, timeout=timeout, proc=self.proc)
        except ToolError as exc:
            log = (workdir / "nsd.stderr").read_text(errors="replace").strip()[-500:]
            self.stop()
            raise ToolError(f"{exc}; nsd said: {log or 'nothing'}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_dir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalUpstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
