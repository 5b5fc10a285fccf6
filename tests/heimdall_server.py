"""Start `python -m heimdall serve` as a real subprocess for tests, and talk to it.

Usage: `with HeimdallProcess([upstream.addr], args=["--min-ttl", "5"]) as srv: srv.query(...)`.
The process is always stopped (SIGTERM, then SIGKILL) even when a test fails.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dns.message
import dns.query

from tools.nsd import free_port

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _log_dir() -> Path:
    """One directory for every server log of this test run, removed when it ends.

    Tests read a log after stop(), so a log cannot go with its server; without
    this, servers stopped by fixtures (not `with`) left hundreds of logs in /tmp.
    """
    path = Path(tempfile.mkdtemp(prefix="heimdall-test-logs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass
class HeimdallProcess:
    upstreams: list[str]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    address: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    def start(self, timeout: float = 20.0) -> "HeimdallProcess":
        self.port = self.port or free_port()  # probed on 127.0.0.1; fine for ::1 too
        fd, name = tempfile.mkstemp(prefix="heimdall-", suffix=".log", dir=_log_dir())
        os.close(fd)
        self.log_path = Path(name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
        env["HEIMDALL_HTTP_BIND_ADDR"] = "disabled"  # tests run many servers; HTTP tests pass a free port
        env.update(self.env)
        host = f"[{self.address}]" if ":" in self.address else self.address
        cmd = [sys.executable, "-m", "heimdall", "serve", "--bind-addr", f"{host}:{self.port}"]
        if self.upstreams:
            cmd += ["--upstream-servers", ",".join(self.upstreams)]
        self.proc = subprocess.Popen(cmd + self.args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "wb"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log:
            if self.proc.poll() is not None:
                raise RuntimeError(f"heimdall exited with {self.proc.returncode}: {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"heimdall did not start: {self.log}")
            time.sleep(0.05)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 3.0,
              **make_kw) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **make_kw)
        fn = dns.query.tcp if tcp else dns.query.udp
        return fn(q, self.address, port=self.port, timeout=timeout)

    def raw(self, packet: bytes, timeout: float = 1.0) -> bytes | None:
        """Send one datagram; the reply, or None when none comes within timeout."""
        with socket.socket(socket.AF_INET6 if ":" in self.address else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(packet, (self.address, self.port))
            try:
                return s.recv(65535)
            except socket.timeout:
                return None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        code = self.proc.returncode
        try:  # workers of a supervisor share its session: leave none behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return code

    def __enter__(self) -> "HeimdallProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.log_path:
            self.log_path.unlink(missing_ok=True)


def answers(port: int, address: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when a server on port answers a query for www.example.test within timeout."""
    import dns.exception

    try:
        dns.query.udp(dns.message.make_query("www.example.test", "A"), address, port=port, timeout=timeout)
        return True
    except (dns.exception.Timeout, OSError):
        return False


def serve_until_answered(upstream_addr: str, env: dict[str, str],
                         meanwhile: Callable[[subprocess.Popen, int], None] | None = None) -> str:
    """Run `heimdall serve` (stderr captured) until it answers, call meanwhile(proc, port), stop it with
    SIGTERM; asserts it exited 0 and returns its stderr."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_") and k != "JOURNAL_STREAM"}
    full.update({"HEIMDALL_HTTP_BIND_ADDR": "disabled"}, **env)
    proc = subprocess.Popen([sys.executable, "-m", "heimdall", "serve", "--bind-addr", f"127.0.0.1:{port}",
                             "--upstream-servers", upstream_addr], env=full, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not answers(port, timeout=0.5):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        if meanwhile is not None:
            meanwhile(proc, port)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return err
