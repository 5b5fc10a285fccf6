"""The capacity ramp: the highest open-loop rate a server answers within a loss and p99 budget.

Each step is one open-loop run of the built-in generator (tools/loadgen.py:
queries leave on a schedule whatever the replies do) at an offered rate. The
rate grows geometrically from `start_qps` until a step fails (loss above
`max_loss` or p99 above `max_p99_ms`), then bisects (geometric mean)
between the last rate that held and the first that failed until they are
within `precision`. The capacity is the highest rate that held. A closed
loop would slow down with the server and never show the knee; an open loop
past the knee builds a queue, so p99 climbs within a step of a few seconds.

Per step the server's CPU (its process tree, when its pid is known) and the
generator's are recorded: a generator that cannot send the offered rate, or
is busy near a whole core, is the limit, not the server, and the result says
so (`limit`, `saturation`); such a rate bounds the search like a failed one,
so the figure is the most the generator could show. After a failed step the ramp waits until one
query is answered, so the server's backlog does not spill into the next step,
and tries the rate once more unless it failed by far: on a shared machine a
neighbour's burst fails a step now and then, and a rate fails only twice running.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from tools.errors import EXIT_USAGE, ToolError
from tools.loadgen import LoadConfig, parse_server, run_load
from tools.priming import prime
from tools.resources import process_tree
from tools.scenarios import question

SCHEMA = "heimdall.ramp/1"
BUSY = 0.90                    # a process busy this share of the window saturates its core
STEP_OVERHEAD_S = 1.5          # process start, drain and settle per step, for the time budget
START_AHEAD_NS = 300_000_000   # a step's processes start this long after it is set up (time to fork)
CPU_EVERY_S = 0.05             # how often the server's CPU is read during a step


@dataclass
class RampConfig:
    """What to ramp against and when a step fails; defaults finish within two minutes."""

    server: str
    test_type: str = "cache-hit"
    max_loss: float = 0.01         # fraction of queries unanswered within the timeout
    max_p99_ms: float = 50.0
    start_qps: float = 500.0
    max_qps: float = 500_000.0
    growth: float = 2.0
    precision: float = 0.05        # stop bisecting when failed/held <= 1 + precision
    step_s: float = 3.0
    warmup_s: float = 0.5
    budget_s: float = 110.0
    timeout_ms: float = 1000.0
    clients: int | None = None
    processes: int | None = None
    zone: str = "bench.test"
    pid: int | None = None         # the server's pid, for its CPU per step
    confirm: bool = True           # try a failed rate once more before believing it

    def validate(self) -> None:
        checks = [
            (0 <= self.max_loss < 1, f"--max-loss must be a percentage in [0, 100) (got {self.max_loss * 100:g})"),
            (self.max_p99_ms > 0, f"--max-p99 must be > 0 ms (got {self.max_p99_ms:g})"),
            (self.start_qps >= 1, f"--ramp-start must be >= 1 q/s (got {self.start_qps:g})"),
            (self.max_qps >= self.start_qps, f"--ramp-max ({self.max_qps:g}) must be >= --ramp-start"),
            (self.growth > 1, f"--ramp-growth must be > 1 (got {self.growth:g})"),
            (self.step_s > 0, f"--ramp-step must be > 0 s (got {self.step_s:g})"),
            (self.budget_s > 0, f"--ramp-budget must be > 0 s (got {self.budget_s:g})"),
            (0 < self.precision < 1, f"ramp precision must be in (0, 1) (got {self.precision:g})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ToolError(message, EXIT_USAGE)
        if self.pid is not None and not process_tree(self.pid):
            raise ToolError(f"--pid {self.pid}: no such process", EXIT_USAGE)


@dataclass
class Step:
    """One rate tried: what was offered, what came back, what each side's CPU did."""

    offered_qps: float
    sent_qps: float
    qps: float
    loss: float
    p50_ms: float | None
    p99_ms: float | None
    held: bool
    failed_on: list[str]
    server_cpu_cores: float | None
    server_waited_cores: float | None   # runnable but waiting for a CPU (a neighbour had it)
    server_saturated: bool             # used + waited >= BUSY per process of its tree
    generator_cpu_cores: float
    generator_busy_max: float
    generator_limited: bool
    warnings: list[str] = field(default_factory=list)
    repeat: bool = False           # the second try of a rate whose first try failed


def _ms(us: float | None) -> float | None:
    return round(us / 1000.0, 3) if us is not None else None


def judge(cfg: RampConfig, offered: float, load: dict, server_cores: float | None, procs: int = 1,
          server_waited: float | None = None) -> Step:
    """A step from its load result: held when loss and p99 are within the limits."""
    sent, received, window = load["sent"], load["received"], max(load["duration_s"], 1e-9)
    loss = 1 - received / sent if sent else 1.0
    p99 = _ms(load["latency_us"]["p99"])
    failed = []
    if loss > cfg.max_loss:
        failed.append("loss")
    if p99 is None or p99 > cfg.max_p99_ms:
        failed.append("p99")
    gen = load["generator"]
    busy = max(gen["busy_per_process"], default=0.0)
    sent_qps = sent / window
    return Step(offered_qps=round(offered, 1), sent_qps=round(sent_qps, 1), qps=load["qps"],
                loss=round(loss, 5), p50_ms=_ms(load["latency_us"]["p50"]), p99_ms=p99,
                held=not failed, failed_on=failed, server_cpu_cores=server_cores,
                server_waited_cores=server_waited,
                server_saturated=server_cores is not None and server_cores + (server_waited or 0.0) >= BUSY * procs,
                generator_cpu_cores=round(gen["cpu_percent"] / 100.0, 3), generator_busy_max=busy,
                generator_limited=sent_qps < 0.97 * offered, warnings=list(load["warnings"]))


def next_rate(cfg: RampConfig, held: float | None, failed: float | None, rate: float) -> float | None:
    """The next rate to try, or None when the knee is found (or out of range)."""
    if failed is None:
        if rate >= cfg.max_qps:
            return None
        return min(rate * cfg.growth, cfg.max_qps)
    if held is None:
        lower = failed / cfg.growth
        return lower if lower >= 1 else None
    if failed / held <= 1 + cfg.precision:
        return None
    return math.sqrt(held * failed)


def _drain(cfg: RampConfig) -> None:
    """Wait (up to ~15 s) until one query is answered: the backlog of a failed step has cleared."""
    family, sockaddr = parse_server(cfg.server)
    prime(family, sockaddr, [question(f"www.{cfg.zone}")], 5.0, rounds=1)


def tree_schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of every thread in pid's tree."""
    run = wait = 0.0
    seen = False
    for proc in process_tree(pid):
        try:
            tids = os.listdir(f"/proc/{proc.pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                    fields = f.read().split()
                run += int(fields[0]) / 1e9
                wait += int(fields[1]) / 1e9
                seen = True
            except (OSError, ValueError, IndexError):
                continue
    return (run, wait) if seen else None


class WindowCpu:
    """The server tree's CPU (and its wait for a CPU) over exactly a step's measured window: a thread
    reads them every 50 ms while the step runs, and the window's share is interpolated once its
    instants are known (the generator's start-up and drain around the window are not counted)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.readings: list[tuple[int, tuple[float, float]]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ramp-server-cpu", daemon=True)

    def _read(self) -> None:
        cpu = tree_schedstat(self.pid) if self.pid else None
        if cpu is not None:
            self.readings.append((time.monotonic_ns(), cpu))

    def _run(self) -> None:
        self._read()
        while not self._stop.wait(CPU_EVERY_S):
            self._read()

    def __enter__(self) -> "WindowCpu":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self._read()

    def _at(self, t_ns: int, i: int) -> float | None:
        for (t0, c0), (t1, c1) in zip(self.readings, self.readings[1:]):
            if t0 <= t_ns <= t1:
                return c0[i] + (c1[i] - c0[i]) * (t_ns - t0) / max(t1 - t0, 1)
        return None

    def cores(self, open_ns: int, close_ns: int, i: int = 0) -> float | None:
        """Cores used (i=0) or waited for (i=1) on average over [open_ns, close_ns]."""
        before, after = self._at(open_ns, i), self._at(close_ns, i)
        if before is None or after is None:
            return None
        return round((after - before) / ((close_ns - open_ns) / 1e9), 3)


def run_step(cfg: RampConfig, rate: float, first: bool) -> Step:
    """One open-loop run at `rate`, the server's CPU taken over its window."""
    start_ns = time.monotonic_ns() + START_AHEAD_NS
    lc = LoadConfig(test_type=cfg.test_type, server=cfg.server, duration=cfg.step_s, clients=cfg.clients,
                    timeout_ms=cfg.timeout_ms, qps=rate, warmup=cfg.warmup_s, zone=cfg.zone,
                    processes=cfg.processes, prime=first, start_at_ns=None if first else start_ns)
    if first:   # priming takes a while: no window instant to keep, and no server CPU for this step
        return judge(cfg, rate, run_load(lc), None, server_procs(cfg.pid))
    with WindowCpu(cfg.pid) as cpu:
        load = run_load(lc)
    open_ns = start_ns + int((load["start_late_s"] + cfg.warmup_s) * 1e9)
    close_ns = open_ns + int(load["duration_s"] * 1e9)
    return judge(cfg, rate, load, cpu.cores(open_ns, close_ns), server_procs(cfg.pid),
                 cpu.cores(open_ns, close_ns, 1))


def server_procs(pid: int | None) -> int:
    """Processes in the server's tree, at most the CPUs: the cores it could use at most."""
    return max(1, min(len(process_tree(pid)) if pid else 1, os.cpu_count() or 1))


def clearly_over(cfg: RampConfig, step: Step) -> bool:
    """A failure no neighbour's burst explains: heavy loss or p99 ten times the limit."""
    return step.loss > max(10 * cfg.max_loss, 0.05) or (step.p99_ms or 0.0) > 10 * cfg.max_p99_ms


def step_line(step: Step) -> str:
    return (f"  {step.offered_qps:>10,.0f} q/s offered{' (again)' if step.repeat else ''}: loss {step.loss:.2%}  "
            f"p99 {step.p99_ms if step.p99_ms is not None else '-'} ms  "
            + ("held" if step.held else f"failed ({', '.join(step.failed_on)})")
            + (f"  server {step.server_cpu_cores:.2f} cores" if step.server_cpu_cores is not None else "")
            + f"  generator {step.generator_cpu_cores:.2f} cores"
            + ("  (generator-limited: sent fewer than offered)" if step.generator_limited else ""))


def saturation(failed: Step | None, limit: str) -> str:
    """Which side ran out at the knee (the lowest rate that failed for good), in words."""
    if limit == "generator" or (failed and failed.generator_busy_max >= BUSY):
        return ("the generator is the limit: it could not send the offered rate or was busy "
                "near a whole core; the server's capacity is at least the figure reported")
    if failed is None:
        return "no step failed: the capacity is at least the highest rate tried"
    if failed.server_cpu_cores is None:
        return "server CPU not measured (give --pid)"
    return (f"at the lowest failed rate ({failed.offered_qps:,.0f} q/s) the server used "
            f"{failed.server_cpu_cores:.2f} cores (and waited {failed.server_waited_cores or 0:.2f} more for a CPU), "
            f"the generator {failed.generator_cpu_cores:.2f}: "
            + ("the server's CPU is the limit" if failed.server_saturated
               else "neither was busy a whole core, so the limit is elsewhere (a lock, a queue, the network)"))


def ramp(cfg: RampConfig, say: Callable[[str], None] = lambda _m: None) -> dict:
    """Ramp until the knee; returns the heimdall.ramp/1 result."""
    cfg.validate()
    start = time.monotonic()
    steps: list[Step] = []
    held: float | None = None
    failed: float | None = None
    knee: Step | None = None
    out_of_time = False
    rate: float | None = cfg.start_qps
    limit = "max-qps"
    while rate is not None:
        if steps and time.monotonic() - start + cfg.step_s + cfg.warmup_s + STEP_OVERHEAD_S > cfg.budget_s:
            out_of_time = True
            break
        step = run_step(cfg, rate, first=not steps)
        steps.append(step)
        say(step_line(step))
        if not step.held and not step.generator_limited and cfg.confirm and not clearly_over(cfg, step):
            _drain(cfg)   # a neighbour's burst fails a step now and then: a rate fails only twice running
            step = run_step(cfg, rate, first=False)
            step.repeat = True
            steps.append(step)
            say(step_line(step))
        if step.held and not step.generator_limited:
            held = rate if held is None else max(held, rate)
        else:   # a rate the generator could not send bounds the search like one the server failed
            if failed is None or rate < failed:
                failed, knee = rate, step
                limit = "generator" if step.generator_limited else "+".join(step.failed_on)
            _drain(cfg)
        rate = next_rate(cfg, held, failed, rate)
    return {
        "schema": SCHEMA,
        "server": cfg.server,
        "capacity_qps": round(held, 1) if held else None,
        "first_failed_qps": round(failed, 1) if failed else None,
        "limit": limit,
        "out_of_time": out_of_time,    # --ramp-budget ended the search before the knee was this close
        "saturation": saturation(knee, limit),
        "knee": asdict(knee) if knee else None,
        "steps": [asdict(s) for s in steps],
        "elapsed_s": round(time.monotonic() - start, 2),
        "config": asdict(cfg),
    }


def ramp_chart(result: dict, path) -> None:
    """Offered vs answered rate and p99 per step (PNG): the knee is where the lines part."""
    from tools.chart import _pyplot, _save

    plt = _pyplot()
    last = {s["offered_qps"]: s for s in result["steps"]}    # a rate tried twice: its second try
    steps = sorted(last.values(), key=lambda s: s["offered_qps"])
    x = [s["offered_qps"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(x, [s["qps"] for s in steps], marker="o", label="answered q/s")
    ax.plot(x, x, linestyle=":", color="grey", label="offered")
    for s in steps:
        if not s["held"]:
            ax.plot(s["offered_qps"], s["qps"], marker="x", color="red", markersize=9)
    if result["capacity_qps"]:
        ax.axvline(result["capacity_qps"], color="green", alpha=0.5, label=f"capacity {result['capacity_qps']:,.0f}")
    ax.set_xlabel("offered q/s")
    ax.set_ylabel("answered q/s")
    ax2 = ax.twinx()
    ax2.plot(x, [s["p99_ms"] or 0 for s in steps], color="orange", marker=".", label="p99 ms")
    ax2.axhline(result["config"]["max_p99_ms"], color="orange", linestyle="--", alpha=0.5)
    ax2.set_ylabel("p99 ms")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    ax.set_title(f"capacity ramp against {result['server']} (limit: {result['limit']})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def capacity_lines(capacity: dict | None) -> list[str]:
    """The bench report's capacity table (bench --capacity): one row per scenario."""
    if not capacity:
        return ["Capacity: not measured (bench --capacity ramps each scenario's open-loop rate)."]
    lines = ["| scenario | capacity | stopped on | who saturated |", "|---|---|---|---|"]
    for scen, c in capacity.items():
        cap = f"{c['capacity_qps']:,.0f} q/s" if c["capacity_qps"] else "no step held"
        lines.append(f"| {scen} | {cap} | {c['limit']} | {c['saturation']} |")
    return lines
