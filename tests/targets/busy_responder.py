"""A tiny real DNS responder on loopback whose per-query cost the test controls.

Answers every query with the client's ID and question, QR=1, and one fixed A
record, after a fixed amount of Python work: --cost-us sets a fixed number
of work rounds (about 150 ns each on this project's machines), so like real
code its cost is instructions and reads slower when the machine is.
--slower-pct P makes it P % slower per query in everything it does: after
every 100/P queries it does one more query's worth of work and one more
send and receive (to a socket of its own), so the slowdown is a real share,
not a fixed number of microseconds.
--keep-bytes K makes it a cache whose memory is known: it keeps K bytes
(written, so resident) for every name it has not seen before; with
--keep-growing the nth new name keeps K * (1 + n // 500) bytes instead, so
each entry costs more than the one before (memory growing faster than the cache).

    python busy_responder.py [--address 127.0.0.1] [--port 0] [--cost-us 50] [--slower-pct 0] [--drop]
                             [--keep-bytes K [--keep-growing]]

Environment BUSY_COST_US overrides the default cost. Prints "READY <port>" once
bound. --drop binds the port but never answers (a server that does not answer).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys

_ANSWER = struct.pack("!HHHIH4s", 0xC00C, 1, 1, 60, 4, bytes([192, 0, 2, 1]))
_TABLE: dict[int, int] = {}
NS_PER_ROUND = 150.0


def reply_for(query: bytes) -> bytes | None:
    """The fixed answer for a one-question query, or None when it is not one."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        if query[end] & 0xC0:
            return None
        end += query[end] + 1
    end += 5  # root label + QTYPE + QCLASS
    if end > len(query):
        return None
    rflags = 0x8000 | (flags & 0x7900) | 0x0080  # QR, keep opcode+RD, set RA
    return struct.pack("!HHHHHH", qid, rflags, 1, 1, 0, 0) + query[12:end] + _ANSWER


def work(rounds: int) -> None:
    """The per-query work: integer arithmetic and dict stores."""
    h = 0
    for i in range(rounds):
        h = (h * 31 + i) & 0xFFFFF
        _TABLE[h & 1023] = i


def rounds_for(cost_us: float) -> int:
    """Rounds of `work` for cost_us of CPU on the machines this project runs on (about 150 ns a
    round there). A fixed count, not one timed at start: a target calibrated while the machine
    is busy would cost less ever after, and its truth would no longer be known."""
    return max(0, round(cost_us * 1000 / NS_PER_ROUND))


def keeper(keep_bytes: int, growing: bool):
    """The per-query memory keeping of --keep-bytes: a function of the query, or None."""
    if not keep_bytes:
        return None
    store: dict[bytes, bytes] = {}

    def keep(query: bytes) -> None:
        name = query[12:]
        if name not in store:
            size = keep_bytes * (1 + len(store) // 500) if growing else keep_bytes
            store[name] = b"\x01" * size

    return keep


def serve(address: str, port: int, cost_us: float, slower_pct: float, drop: bool, keep_bytes: int = 0,
          growing: bool = False) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((address, port))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((address, 0))
    rounds = rounds_for(cost_us)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    recv, send, sink_addr, sink_recv = sock.recvfrom, sock.sendto, sink.getsockname(), sink.recv
    extra, owed = slower_pct / 100.0, 0.0
    keep = keeper(keep_bytes, growing)
    while True:
        data, peer = recv(4096)
        if drop:
            continue
        answer = reply_for(data)
        if answer is None:
            continue
        work(rounds)
        if keep is not None:
            keep(data)
        send(answer, peer)
        owed += extra
        while owed >= 1.0:   # one more query's worth of everything: work, a send and a receive
            owed -= 1.0
            work(rounds)
            send(answer, sink_addr)
            sink_recv(4096)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cost-us", type=float, default=float(os.environ.get("BUSY_COST_US", "50")))
    ap.add_argument("--slower-pct", type=float, default=0.0, help="be this many percent slower per query")
    ap.add_argument("--drop", action="store_true", help="bind but never answer")
    ap.add_argument("--keep-bytes", type=int, default=0, help="keep this many bytes per new name asked")
    ap.add_argument("--keep-growing", action="store_true", help="each new name keeps more than the one before")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(args.address, args.port, args.cost_us, args.slower_pct, args.drop, args.keep_bytes, args.keep_growing)
    except KeyboardInterrupt:
        pass



def command(port: int, cost_us: float = 50.0, slower_pct: float = 0.0) -> list[str]:
    """The command line that serves on 127.0.0.1:port, for a lab that starts its target (`-- COMMAND`)."""
    return [sys.executable, os.path.abspath(__file__), "--port", str(port), "--cost-us", str(cost_us),
            "--slower-pct", str(slower_pct)]


class Responder:
    """Launch this responder as a child process (for tests): `with Responder(50) as r: r.port, r.pid`."""

    def __init__(self, cost_us: float = 50.0, drop: bool = False, address: str = "127.0.0.1",
                 slower_pct: float = 0.0, keep_bytes: int = 0, keep_growing: bool = False) -> None:
        self.cost_us, self.drop, self.address, self.slower_pct = cost_us, drop, address, slower_pct
        self.keep = ["--keep-bytes", str(keep_bytes)] + (["--keep-growing"] if keep_growing else [])
        self.proc = None
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def server(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> "Responder":
        import subprocess

        cmd = [sys.executable, os.path.abspath(__file__), "--address", self.address, "--cost-us", str(self.cost_us),
               "--slower-pct", str(self.slower_pct)]
        if self.drop:
            cmd.append("--drop")
        cmd += self.keep
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"busy_responder did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Responder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
