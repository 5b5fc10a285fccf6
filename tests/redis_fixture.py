"""A real redis-server on a free loopback port, for shared-cache tests.

Each server has its own work dir, no persistence (`--save "" --appendonly no`)
and its own session, and is killed by the fixture even when the test fails.
`stop()` then `start()` brings it back on the same port (Redis "restarted").
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tools.nsd import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    """redis-server bound to 127.0.0.1:port with its own directory."""

    port: int = 0
    workdir: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain synchronous client for the test's own checks."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> "RedisServer":
        if self.port == 0:
            self.port = free_port()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="heimdall-redis-"))
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", str(self.workdir / "redis.log"),
                "--enable-debug-command", "local"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.2).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def stop(self) -> None:
        """Kill the server (SIGKILL: the 'Redis dies' case), keep port and dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def redis_server():
    """A fresh redis-server for one test; killed afterwards whatever happens."""
    if not shutil.which("redis-server") and not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server not installed (run scripts/setup.sh)")
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()
