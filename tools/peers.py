"""DNS servers under test on loopback: Unbound, dnsmasq and Heimdall, each a context manager.

Every server runs in the foreground as our child, in its own temp dir with
its own pid file and log, and counts as started only when it answers a real
query (`wait_for_dns`). `stop()` always cleans up, also after a failed start.
They forward to an upstream such as `LocalUpstream` (NSD), so the lab can
drive any of them with the same load and probes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.nsd import free_port, wait_for_dns

READY_QNAME = "ready.bench.test."


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ToolError(f"bad upstream address {addr!r}: expected HOST:PORT", EXIT_ENVIRONMENT)
    return host.strip("[]"), int(port)


def _check_port_free(address: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, port))
        except OSError as exc:
            raise ToolError(f"cannot start on {address}:{port}: {exc.strerror}", EXIT_ENVIRONMENT) from None


def stop_session(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the session a server was started in (start_new_session=True), SIGKILL after grace_s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class PeerServer:
    """Common life cycle: write config, spawn, wait for a real answer, stop and clean up."""

    name = "dns server"

    def __init__(self, upstream_addr: str, port: int = 0, address: str = "127.0.0.1") -> None:
        self.upstream_host, self.upstream_port = _split_addr(upstream_addr)
        self.address = address
        self.port = port
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def start(self, timeout: float = 15.0) -> "PeerServer":
        if self.port == 0:
            self.port = free_port(self.address)
        else:
            _check_port_free(self.address, self.port)  # else the readiness query reaches the other server
        self.workdir = Path(tempfile.mkdtemp(prefix=f"heimdall-{self.name}-"))
        cmd = self.command()
        if not shutil.which(cmd[0]) and not os.path.exists(cmd[0]):
            self.stop()
            raise ToolError(f"{cmd[0]} is not installed: run scripts/setup.sh", EXIT_ENVIRONMENT)
        log = open(self.workdir / "stderr.log", "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env=self.environment(), start_new_session=True)
        finally:
            log.close()
        try:
            wait_for_dns(self.address, self.port, READY_QNAME, timeout=timeout, proc=self.proc)
        except ToolError as exc:
            said = self.log_text().strip()[-600:]
            self.stop()
            raise ToolError(f"{self.name}: {exc}; it said: {said or 'nothing'}", EXIT_ENVIRONMENT) from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_session(self.proc)
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def log_text(self) -> str:
        """What the server wrote so far, stderr and log files (for failure messages)."""
        if self.workdir is None:
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def __enter__(self) -> "PeerServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class UnboundServer(PeerServer):
    """Unbound as a caching forwarder to the upstream (no DNSSEC, no remote control)."""

    name = "unbound"

    def __init__(self, upstream_addr: str, port: int = 0, threads: int = 1, cache_entries: int = 100_000,
                 address: str = "127.0.0.1", tls: tuple[str, str] | None = None) -> None:
        super().__init__(upstream_addr, port, address)
        self.threads = threads
        self.cache_entries = cache_entries
        self.tls = tls  # (certificate, key): also serve DNS over TLS and over HTTPS (/dns-query)
        self.tls_port = 0
        self.https_port = 0

    def encrypted_text(self) -> str:
        """Unbound's DoT (tls-port) and DoH (https-port) listeners, on ports of their own."""
        if self.tls is None:
            return ""
        self.tls_port = self.tls_port or free_port(self.address)
        self.https_port = self.https_port or free_port(self.address)
        cert, key = self.tls
        return (f"  interface: {self.address}@{self.tls_port}\n  interface: {self.address}@{self.https_port}\n"
                f"  tls-port: {self.tls_port}\n  https-port: {self.https_port}\n"
                f"  tls-service-pem: \"{cert}\"\n  tls-service-key: \"{key}\"\n"
                "  http-endpoint: \"/dns-query\"\n  incoming-num-tcp: 1000\n")

    def config_text(self) -> str:
        d = self.workdir
        # ~300 bytes per message entry and ~600 per rrset entry, with room to spare
        msg_mb = max(4, self.cache_entries * 400 // 1_000_000)
        return (
            "server:\n"
            f"  interface: {self.address}@{self.port}\n"
            f"  port: {self.port}\n"
            + self.encrypted_text() +
            f"  num-threads: {self.threads}\n"
            "  do-ip6: no\n  do-tcp: yes\n  do-daemonize: no\n"
            "  username: \"\"\n  chroot: \"\"\n"
            f"  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  logfile: \"{d}/unbound.log\"\n"
            "  use-syslog: no\n  verbosity: 0\n"
            "  access-control: 127.0.0.0/8 allow\n"
            "  module-config: \"iterator\"\n"
            "  do-not-query-localhost: no\n"
            "  so-rcvbuf: 4m\n  so-sndbuf: 4m\n  so-reuseport: no\n"  # a port clash must fail, not share

            f"  msg-cache-size: {msg_mb}m\n  rrset-cache-size: {msg_mb * 2}m\n"
            "  msg-cache-slabs: 1\n  rrset-cache-slabs: 1\n  infra-cache-slabs: 1\n  key-cache-slabs: 1\n"
            "  outgoing-range: 1024\n  num-queries-per-thread: 4096\n"
            "  minimal-responses: yes\n  qname-minimisation: no\n"
            # Unbound answers RFC 6761 names (test., invalid., ...) itself unless told not to
            "  local-zone: \"test.\" nodefault\n  domain-insecure: \"test.\"\n"
            "remote-control:\n  control-enable: no\n"
            "forward-zone:\n  name: \".\"\n"
            f"  forward-addr: {self.upstream_host}@{self.upstream_port}\n"
        )

    def command(self) -> list[str]:
        assert self.workdir is not None  # start() sets it before calling command()
        conf = self.workdir / "unbound.conf"
        conf.write_text(self.config_text())
        return [shutil.which("unbound") or "/usr/sbin/unbound", "-d", "-c", str(conf)]


class DnsmasqServer(PeerServer):
    """dnsmasq as a caching forwarder to the upstream."""

    name = "dnsmasq"

    def __init__(self, upstream_addr: str, port: int = 0, cache_size: int = 10_000,
                 address: str = "127.0.0.1", extra_args: list[str] | None = None) -> None:
        super().__init__(upstream_addr, port, address)
        self.cache_size = cache_size
        self.extra_args = list(extra_args or [])  # e.g. --address=/blocked.bench.test/0.0.0.0 to block

    def command(self) -> list[str]:
        d = self.workdir
        return [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "-k", "--no-resolv", "--no-hosts",
                "--conf-file=/dev/null", f"--server={self.upstream_host}#{self.upstream_port}",
                f"--port={self.port}", f"--listen-address={self.address}", "--bind-interfaces",
                f"--cache-size={self.cache_size}", f"--pid-file={d}/dnsmasq.pid", "--user=root",
                "--group=root", "--log-facility=-", "--dns-forward-max=4096", *self.extra_args]


class PdnsRecursorServer(PeerServer):
    """PowerDNS Recursor forwarding every name to the upstream (`forward-zones-recurse=.`), one thread.

    It refuses to send queries to loopback unless `dont-query` is emptied."""

    name = "pdns-recursor"

    def __init__(self, upstream_addr: str, port: int = 0, threads: int = 1, cache_entries: int = 100_000,
                 address: str = "127.0.0.1") -> None:
        super().__init__(upstream_addr, port, address)
        self.threads = threads
        self.cache_entries = cache_entries

    def config_text(self) -> str:
        return (f"local-address={self.address}\nlocal-port={self.port}\nthreads={self.threads}\n"
                "pdns-distributes-queries=no\nreuseport=no\n"
                f"forward-zones-recurse=.={self.upstream_host}:{self.upstream_port}\n"
                "dont-query=\nallow-from=127.0.0.0/8\ndnssec=off\nqname-minimization=no\n"
                f"max-cache-entries={self.cache_entries}\nmax-packetcache-entries={self.cache_entries}\n"
                f"socket-dir={self.workdir}\ndaemon=no\nwrite-pid=no\ndisable-syslog=yes\n"
                "quiet=yes\nloglevel=3\n")

    def command(self) -> list[str]:
        assert self.workdir is not None  # start() sets it before calling command()
        (self.workdir / "recursor.conf").write_text(self.config_text())
        return [shutil.which("pdns_recursor") or "/usr/sbin/pdns_recursor", f"--config-dir={self.workdir}"]


class DnsdistServer(PeerServer):
    """dnsdist: a load-balancing proxy with a packet cache in front of the upstream (no resolver logic)."""

    name = "dnsdist"

    def __init__(self, upstream_addr: str, port: int = 0, cache_entries: int = 100_000,
                 address: str = "127.0.0.1") -> None:
        super().__init__(upstream_addr, port, address)
        self.cache_entries = cache_entries

    def config_text(self) -> str:
        return (f'setLocal("{self.address}:{self.port}")\n'
                'setACL({"127.0.0.0/8"})\n'
                f'newServer({{address="{self.upstream_host}:{self.upstream_port}", name="upstream"}})\n'
                f"getPool(\"\"):setCache(newPacketCache({self.cache_entries}))\n")

    def command(self) -> list[str]:
        assert self.workdir is not None  # start() sets it before calling command()
        conf = self.workdir / "dnsdist.conf"
        conf.write_text(self.config_text())
        return [shutil.which("dnsdist") or "/usr/bin/dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)]


class HeimdallServer(PeerServer):
    """`heimdall serve` from this checkout's Python, configured through HEIMDALL_* variables."""

    name = "heimdall"

    def __init__(self, upstream_addr: str, port: int = 0, env: dict | None = None, workers: int = 1,
                 address: str = "127.0.0.1", python: str | None = None, wrapper: list[str] | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        super().__init__(upstream_addr, port, address)
        self.extra_env = dict(env or {})
        self.tls = tls  # (certificate, key): also serve DNS over TLS and over HTTPS (/dns-query)
        self.tls_port = 0
        self.https_port = 0
        self.workers = workers
        self.python = python or sys.executable
        self.wrapper = list(wrapper or [])   # a command prefix, e.g. valgrind's

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "HEIMDALL_BIND_ADDR": f"{self.address}:{self.port}",
            "HEIMDALL_UPSTREAM_SERVERS": f"{self.upstream_host}:{self.upstream_port}",
            "HEIMDALL_WORKER_THREADS": str(self.workers),
            "HEIMDALL_HTTP_BIND_ADDR": "disabled",  # several servers at once: no shared :8053 unless asked
        })
        if self.tls is not None:
            self.tls_port = self.tls_port or free_port(self.address)
            self.https_port = self.https_port or free_port(self.address)
            env.update({"HEIMDALL_TLS_BIND_ADDR": f"{self.address}:{self.tls_port}",
                        "HEIMDALL_HTTPS_BIND_ADDR": f"{self.address}:{self.https_port}",
                        "HEIMDALL_TLS_CERT_FILE": self.tls[0], "HEIMDALL_TLS_KEY_FILE": self.tls[1]})
        env.update({k: str(v) for k, v in self.extra_env.items()})
        return env

    def command(self) -> list[str]:
        return [*self.wrapper, self.python, "-m", "heimdall", "serve"]
