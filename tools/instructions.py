"""Instructions per query, counted by valgrind's callgrind: the figure a busy machine cannot move.

On a shared 2-core VM the CPU time of one query moves 10-30 % with the
neighbours and with memory paged out; the number of instructions the server's
own code executes for it does not (the same count to a few parts in 10^5
whether the other core is idle or busy). So the gate also starts a second
copy of the target under `valgrind --tool=callgrind` (instrumentation off
until it answers), asks each scenario's queries one at a time (one query,
one answer: no batching that would depend on the machine's speed) and reads
callgrind's counter after each part of a block of queries
(`callgrind_control --dump`, which also zeroes it). BLOCKS values per
scenario, each the least of its PARTS parts per query: work a server does by
the clock, not per query (Heimdall publishes its statistics once a second,
~1 M instructions), lands in at most one of a block's parts when the block
takes less than a second, and would otherwise make the count depend on how
fast the machine ran callgrind.

User-space instructions only: the kernel's share of a query is what CPU per
query and syscalls per query measure. high-concurrency asks mixed's queries
and adds only concurrency, which a one-at-a-time count cannot see: it is not
counted. The copy runs with PYTHONHASHSEED=0 so dictionaries probe alike in
every run.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.lab_adapter import ZONE, split_server
from tools.resources import process_tree
from tools.scenarios import HEADER_TAIL, build_scenario

BLOCKS = 5
PARTS = 3
QUERIES_PER_PART = {"cache-hit": 300, "cache-miss": 60, "mixed": 150, "blocking": 300}
WARM_SET = 100            # names primed and re-asked: small, as every miss costs ~3 ms under callgrind
START_TIMEOUT_S = 120.0   # Heimdall starts in ~3 s under callgrind here; CI machines are slower
ANSWER_TIMEOUT_S = 10.0
DUMP_TIMEOUT_S = 30.0
METRIC = "instructions_per_query"


def wrapper(out_dir: Path) -> list[str]:
    """The command prefix that runs a server under callgrind, counting nothing until switched on."""
    return ["valgrind", "--tool=callgrind", "--quiet", "--instr-atstart=no", "--trace-children=yes",
            f"--callgrind-out-file={out_dir}/cg.%p"]


def require_valgrind() -> None:
    missing = [p for p in ("valgrind", "callgrind_control") if shutil.which(p) is None]
    if missing:
        raise ToolError(f"counting instructions per query needs {' and '.join(missing)} (Debian's valgrind; "
                        "scripts/setup.sh installs it), or --no-instructions", EXIT_ENVIRONMENT)


class Callgrind:
    """The counters of a process tree running under callgrind, read block by block."""

    def __init__(self, pid: int, out_dir: Path) -> None:
        self.pid = pid
        self.out_dir = out_dir
        self.read: set[Path] = set()

    def control(self, option: str) -> list[int]:
        """Send one callgrind_control option to every process of the tree; the pids that took it."""
        took = []
        for proc in process_tree(self.pid):
            done = subprocess.run(["callgrind_control", option, str(proc.pid)], capture_output=True,
                                  text=True, timeout=DUMP_TIMEOUT_S)
            if done.returncode == 0:
                took.append(proc.pid)
        if not took:
            raise ToolError(f"callgrind_control {option} reached no process of pid {self.pid} "
                            "(did the server exit?)", EXIT_ENVIRONMENT)
        return took

    def take(self) -> int:
        """Instructions executed since the last take, summed over the tree; the counters restart at 0."""
        return sum(self._new_total(pid) for pid in self.control("--dump"))

    def _new_total(self, pid: int) -> int:
        deadline = time.monotonic() + DUMP_TIMEOUT_S
        while time.monotonic() < deadline:
            for path in sorted(self.out_dir.glob(f"cg.{pid}.*")):
                total = None if path in self.read else _totals(path)
                if total is not None:
                    self.read.add(path)
                    return total
            time.sleep(0.02)
        raise ToolError(f"callgrind wrote no dump for pid {pid} within {DUMP_TIMEOUT_S:g}s", EXIT_ENVIRONMENT)


def _totals(path: Path) -> int | None:
    """The `totals:` line of a finished callgrind dump (None while it is being written)."""
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Asker:
    """One query at a time over a connected UDP socket, each waited for before the next."""

    def __init__(self, server: str) -> None:
        host, port = split_server(server)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.connect((host, port))
        self.server = server
        self.qid = 0

    def ask(self, question: bytes) -> None:
        self.qid = (self.qid + 1) & 0xFFFF
        self.sock.send(self.qid.to_bytes(2, "big") + HEADER_TAIL + question)
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0]:
                answer = self.sock.recv(65535)
                if answer[:2] == self.qid.to_bytes(2, "big"):
                    return
        raise ToolError(f"{self.server} did not answer a query within {ANSWER_TIMEOUT_S:g}s while "
                        "instructions were counted", EXIT_ENVIRONMENT)

    def close(self) -> None:
        self.sock.close()


def count_scenarios(server: str, counter: Callgrind, scenarios: list[str],
                    say: Callable[[str], None]) -> dict[str, list[float]]:
    """BLOCKS values of instructions per query for each countable scenario."""
    asker = Asker(server)
    out: dict[str, list[float]] = {}
    try:
        for i, name in enumerate(s for s in scenarios if s in QUERIES_PER_PART):
            # a tag per scenario: mixed's new names must not be the ones cache-miss just cached
            sc = build_scenario(name, zone=ZONE, warm_set=WARM_SET, blocklist_size=WARM_SET, run_tag=f"cg{i}")
            stream, n = sc.stream(0, 1), QUERIES_PER_PART[name]
            for q in sc.prime:
                asker.ask(q)
            for _ in range(PARTS * n):    # a first block warms the server's caches and interpreter
                asker.ask(stream.next()[0])
            counter.take()
            values = []
            for _ in range(BLOCKS):
                parts = []
                for _ in range(PARTS):
                    for _ in range(n):
                        asker.ask(stream.next()[0])
                    parts.append(counter.take() / n)
                values.append(min(parts))
            out[name] = values
            say(f"  {name}: {sorted(values)[BLOCKS // 2]:,.0f} instructions per query "
                f"({BLOCKS} blocks of {PARTS} x {n} queries under callgrind)")
    finally:
        asker.close()
    return out


def count(opts, say: Callable[[str], None], env: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Instructions per query of the target for opts' scenarios, or {} when they cannot be counted
    here (an already running --server/--pid: the lab can only count a server it starts)."""
    from tools.measure import open_target

    if not opts.instructions:
        return {}
    if opts.server is not None and not opts.command:
        say("note: instructions per query are not counted for a running --server/--pid; "
            "give the server's command after -- to have them")
        return {}
    if not any(s in QUERIES_PER_PART for s in opts.scenarios):
        return {}
    require_valgrind()
    say("counting instructions per query under callgrind (one query at a time)")
    with contextlib.ExitStack() as stack:
        out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="heimdall-callgrind-")))
        target = stack.enter_context(open_target(opts, env={**(env or {}), "PYTHONHASHSEED": "0"},
                                                 wrapper=wrapper(out_dir), start_timeout=START_TIMEOUT_S))
        counter = Callgrind(target.pid, out_dir)
        counter.control("--instr=on")
        return count_scenarios(target.server, counter, opts.scenarios, say)


def description() -> dict:
    """What a document's instruction counts mean (its top-level `instructions`)."""
    return {"tool": "valgrind callgrind", "blocks": BLOCKS, "parts": PARTS, "queries_per_part": dict(QUERIES_PER_PART),
            "warm_set": WARM_SET, "one_query_at_a_time": True}
