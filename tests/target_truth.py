"""What one answer of tests/targets/busy_responder.py costs, measured apart from the lab.

The lab's figures for the responder are held to these: its per-query work
(`reply_for` and `work`, the code the test sets) counted by callgrind the
same way the lab counts (PYTHONHASHSEED=0, user-space instructions), and
timed as CPU time in this process. The lab sees that plus one receive and
one send per query, so its figure is at least the truth and above it by the
cost of the socket calls only (for CPU time: below a whole exchange with a
client, timed in this process).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from targets.busy_responder import reply_for, rounds_for, work

TARGET_DIR = Path(__file__).resolve().parent / "targets"
QUERY = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\x05bench\x04test\x00\x00\x01\x00\x01"
LOOP = """
import sys
sys.path.insert(0, {dir!r})
from busy_responder import reply_for, rounds_for, work
query, rounds = {query!r}, rounds_for({cost!r})
for _ in range({n}):
    reply_for(query)
    work(rounds)
"""


def _callgrind_total(cost_us: float, n: int) -> int:
    """Instructions callgrind counts for a Python run of n answers' work (interpreter start included)."""
    program = LOOP.format(dir=str(TARGET_DIR), query=QUERY, cost=cost_us, n=n)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                               sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONHASHSEED="0"))
    assert done.returncode == 0, done.stderr[-2000:]
    refs = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    assert refs, done.stderr[-2000:]
    return int(refs.group(1).replace(",", ""))


def instructions_per_answer(cost_us: float, n: int = 500) -> float:
    """The work's instructions per answer: a run of n answers minus a run of none, over n."""
    return (_callgrind_total(cost_us, n) - _callgrind_total(cost_us, 0)) / n


def _least_cpu_us(step, n: int, batches: int) -> float:
    """CPU time per call of step in this process: the least of a few batches (the least disturbed)."""
    best = float("inf")
    for _ in range(batches):
        start = time.process_time()
        for _ in range(n):
            step()
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def cpu_us_per_answer(cost_us: float, n: int = 2000, batches: int = 5) -> tuple[float, float]:
    """(work, exchange): CPU per answer of the work alone, and of a whole exchange in this process:
    a client's send, the responder's receive, work and send, the client's receive. The responder's
    own share lies between the two."""
    rounds = rounds_for(cost_us)

    def answer() -> None:
        reply_for(QUERY)
        work(rounds)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        address = server.getsockname()

        def exchange() -> None:
            client.sendto(QUERY, address)
            query, peer = server.recvfrom(4096)
            server.sendto(reply_for(query), peer)
            work(rounds)
            client.recv(4096)

        return _least_cpu_us(answer, n, batches), _least_cpu_us(exchange, n, batches)
