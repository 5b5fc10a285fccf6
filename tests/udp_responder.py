"""A loopback UDP socket served by a thread: the scaffold of the tests' fake upstreams."""

from __future__ import annotations

import socket
import threading


class UdpResponder:
    """Binds 127.0.0.1:0 on enter, calls `handle(data, src)` for each datagram, stops on exit."""

    def handle(self, data: bytes, src: tuple) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, src = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            self.handle(data, src)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
