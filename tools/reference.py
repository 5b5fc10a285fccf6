"""The reference responder: a fixed, tiny DNS server that measures the machine, not the code.

`check` loads it at the same time as the target, window by window
(tools/pairing.py), and judges wall-clock and CPU figures as ratios to it: a
machine that is slower or busier for a while moves both alike, so the ratio
stays where it was. The program answers every query
with its question and one canned A record after a fixed amount of Python work
(a loop of integer arithmetic and dict stores, tens of microseconds): like a
real server its cost is instructions, not time, so it reads slower when the
machine is, and it is the bottleneck under the lab's load, as a server is,
rather than the load generator. Its text is fingerprinted (`VERSION`):
ratios taken against a different program are not comparable.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import Self

from tools.errors import ToolError

PROGRAM = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", int(sys.argv[1])))
FLAGS, COUNTS = b"\x81\x80", b"\x00\x01\x00\x01\x00\x00\x00\x00"
ANSWER = bytes.fromhex("c00c000100010000012c0004c0000201")
recvfrom, sendto = s.recvfrom, s.sendto
table = {}
while True:
    d, a = recvfrom(4096)
    h = 0
    for i in range(200):
        h = (h * 31 + i) & 0xFFFFF
        table[h & 1023] = i
    sendto(d[:2] + FLAGS + COUNTS + d[12:] + ANSWER, a)
"""

VERSION = hashlib.sha256(PROGRAM.encode()).hexdigest()[:12]
KIND = "reference responder (python, fixed work per query, canned answer)"


class ProgramResponder:
    """A one-file Python responder program on a free loopback port, ours to stop."""

    program = ""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> Self:
        from tools.nsd import free_port, wait_for_dns

        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", self.program, str(self.port)],
                                     start_new_session=True, stderr=subprocess.DEVNULL)
        try:
            wait_for_dns("127.0.0.1", self.port, proc=self.proc)
        except ToolError:
            self.stop()
            raise
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReferenceResponder(ProgramResponder):
    """The reference program."""

    program = PROGRAM

    def describe(self) -> dict:
        return {"kind": KIND, "version": VERSION, "server": self.addr, "pid": self.pid}
