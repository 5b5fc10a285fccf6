"""`heimdall serve` speaks sd_notify(3) to a socket the test listens on, as systemd's Type=notify expects.

The socket has SO_PASSCRED set, so each datagram carries its sender's pid:
only the main process may notify (workers must stay silent).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from heimdall_server import ROOT, answers, serve_until_answered

from tools.nsd import free_port


class NotifySocket:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def next(self, timeout: float = 20.0) -> tuple[int, dict[str, str]]:
        """(sender pid, fields) of the next datagram."""
        self.sock.settimeout(timeout)
        data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("iII", d)[0] for level, kind, d in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return pid, dict(line.split("=", 1) for line in data.decode().splitlines())


@pytest.mark.parametrize("workers, address", [(1, "file"), (2, "file"), (2, "@abstract")])
def test_ready_reloading_stopping_from_the_main_process(upstream, tmp_path, workers, address):
    address = str(tmp_path / "notify") if address == "file" else f"@heimdall-test-{os.getpid()}-{workers}"
    listener = NotifySocket(address)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env.update(NOTIFY_SOCKET=address, HEIMDALL_HTTP_BIND_ADDR="disabled", HEIMDALL_WORKER_THREADS=str(workers))
    proc = subprocess.Popen([sys.executable, "-m", "heimdall", "serve", "--bind-addr", f"127.0.0.1:{port}",
                             "--upstream-servers", upstream.addr], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        pid, ready = listener.next()
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid) and pid == proc.pid, ready
        assert answers(port), "READY=1 came before the server answered"
        proc.send_signal(signal.SIGHUP)
        pid, reloading = listener.next()
        assert pid == proc.pid and reloading["RELOADING"] == "1", reloading
        assert abs(int(reloading["MONOTONIC_USEC"]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30e6
        pid, again = listener.next()
        assert pid == proc.pid and again["READY"] == "1", again
        proc.send_signal(signal.SIGTERM)
        pid, stopping = listener.next()
        assert pid == proc.pid and stopping["STOPPING"] == "1", stopping
        assert proc.wait(20) == 0
        listener.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):  # nothing more, from any process (a worker's message would land here)
            listener.sock.recv(4096)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        listener.sock.close()


def test_a_vanished_notify_socket_is_one_warning_not_a_failure(upstream, tmp_path):
    def reload_and_answer(proc: subprocess.Popen, port: int) -> None:
        proc.send_signal(signal.SIGHUP)
        assert answers(port)

    err = serve_until_answered(upstream.addr, {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}, reload_and_answer)
    assert err.count("cannot notify the service manager") == 1, err
