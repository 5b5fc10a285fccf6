"""Measuring windows: the engine `bench`, `baseline create` and `check` share.

A *window* is
one short load run of one scenario, with the server's CPU time, the probes'
figures and the machine's other CPU use taken over exactly that window. A
*repeat* is one window of every scenario; repeats rotate the scenario order,
so slow drift of the machine (and cache growth) hits every scenario alike.
`run_bench` is the bench's whole run: windows, per-scenario JSON, the
resource CSV and the Markdown report in a timestamped results directory.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import psutil

from heimdall.atomic import atomic_write_json
from tools import lab_adapter as lab
from tools.command_server import CommandServer
from tools.errors import EXIT_ENVIRONMENT, EXIT_TARGET, ToolError
from tools.files import new_results_dir
from tools.provenance import provenance
from tools.resources import ResourceSampler, process_tree, system_busy_seconds, tree_cpu_seconds

WINDOW_SCHEMA = "heimdall.window/1"


@dataclass
class LabOptions:
    """What to measure and how; shared by bench, baseline create and check."""

    scenarios: list[str] = field(default_factory=lambda: list(lab.SCENARIOS))
    duration: float = 30.0
    warmup: float = 2.0
    clients: int | None = None
    repeats: int = 1
    timeout_ms: int = 2000
    engine: str = "builtin"
    server: str | None = None
    pid: int | None = None
    probes: list[str] = field(default_factory=list)
    command: list[str] | None = None   # `-- COMMAND`: the server the lab starts (answering at `server`)
    instructions: bool = False         # also count instructions per query under callgrind
    flame: bool = False
    results_dir: Path = Path("performance_results")
    cache_fill: int = 0                # bench: RSS per cached entry after this many new names, and twice as many
    capacity: bool = False             # bench: the open-loop capacity of each scenario (load --ramp)

    def load_params(self) -> dict:
        """The load parameters recorded in a baseline."""
        return {"scenarios": list(self.scenarios), "duration_s": self.duration, "warmup_s": self.warmup,
                "clients": self.clients or lab.DEFAULT_CLIENTS, "repeats": self.repeats,
                "timeout_ms": self.timeout_ms, "engine": self.engine, "zone": lab.ZONE}


def parse_scenarios(text: str) -> list[str]:
    text = (text or "all").strip().lower()
    if text == "all":
        return list(lab.SCENARIOS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in lab.SCENARIOS]
    if unknown or not names:
        raise ToolError(f"unknown scenario {', '.join(unknown) or '(none given)'} "
                        f"(known: {', '.join(lab.SCENARIOS)}, all)", EXIT_ENVIRONMENT)
    return list(dict.fromkeys(names))


def validate_numbers(opts: LabOptions) -> None:
    if not opts.duration > 0:
        raise ToolError(f"--duration must be > 0 (got {opts.duration})", EXIT_ENVIRONMENT)
    if opts.warmup < 0:
        raise ToolError(f"--warmup must be >= 0 (got {opts.warmup})", EXIT_ENVIRONMENT)
    if opts.repeats < 1:
        raise ToolError(f"--repeats must be >= 1 (got {opts.repeats})", EXIT_ENVIRONMENT)
    if opts.clients is not None and opts.clients < 1:
        raise ToolError(f"--clients must be >= 1 (got {opts.clients})", EXIT_ENVIRONMENT)
    if opts.command:
        if opts.server is None or opts.pid is not None:
            raise ToolError("-- COMMAND starts the server: give the address it answers on with --server "
                            "HOST:PORT, and no --pid", EXIT_ENVIRONMENT)
    elif (opts.server is None) != (opts.pid is None):
        raise ToolError("give --server HOST:PORT and --pid PID together, or --server and -- COMMAND "
                        "(or neither, to start Heimdall and an upstream on loopback)", EXIT_ENVIRONMENT)


@dataclass
class Target:
    server: str
    pid: int
    info: dict


@contextlib.contextmanager
def open_target(opts: LabOptions, env: dict[str, str] | None = None, wrapper: list[str] | None = None,
                start_timeout: float = 15.0) -> Iterator[Target]:
    """The given server, checked; or the given command (`-- COMMAND`), or Heimdall + NSD, started
    here (with `env` over their environment, `wrapper` before their command) and always stopped."""
    if opts.server is not None and not opts.command:
        assert opts.pid is not None and not wrapper  # validate_numbers(): --server comes with --pid
        lab.split_server(opts.server)
        lab.check_pid(int(opts.pid))
        lab.check_answers(opts.server)
        yield Target(opts.server, int(opts.pid), {"kind": "external", "server": opts.server})
        return
    with tempfile.TemporaryDirectory(prefix="heimdall-lab-") as tmp:
        started: lab.OwnServer | CommandServer
        if opts.command:
            assert opts.server is not None
            started = CommandServer([*(wrapper or []), *opts.command], opts.server, env=dict(env or {}),
                                        start_timeout=start_timeout)
        else:
            started = lab.OwnServer(Path(tmp), env=dict(env or {}), wrapper=list(wrapper or []),
                                    start_timeout=start_timeout)
        try:
            started.start()
            address = opts.server if isinstance(started, CommandServer) else started.address
            lab.check_answers(str(address))
            yield Target(str(address), started.pid, started.describe())
        finally:
            started.stop()


@dataclass
class Reading:
    """The counters a window is measured by, read at one instant: the server's CPU (its process
    tree; None once it is gone), this process's and its reaped children's, the machine's busy time."""

    server: float | None
    own: float
    system: float
    t: float

    @classmethod
    def take(cls, pid: int) -> "Reading":
        return cls(tree_cpu_seconds(pid), lab.own_cpu_seconds(), system_busy_seconds(), time.monotonic())


def measure_window(opts: LabOptions, target: Target, scenario: str, repeat: int,
                   probes: lab.ProbeSet | None, flame_dir: Path | None = None) -> dict:
    """Warm up, then one measured load window with CPU, probes and machine load over it."""
    clients = lab.clients_for(scenario, opts.clients)
    if opts.warmup > 0:
        lab.run_load(scenario, target.server, opts.warmup, clients, opts.timeout_ms, opts.engine)
    flame: dict = {}
    flame_thread = None
    if flame_dir is not None:
        def record() -> None:
            try:
                flame.update(lab.flame_graph(target.pid, opts.duration, flame_dir, f"flame_{scenario}"))
            except Exception as exc:  # noqa: BLE001 - a failed profile must not end the bench
                flame["unavailable"] = f"py-spy failed: {type(exc).__name__}: {exc}"

        flame_thread = threading.Thread(target=record, daemon=True)
    before = Reading.take(target.pid)
    if probes is not None:
        probes.open_window()
    if flame_thread is not None:
        flame_thread.start()
    load = lab.run_load(scenario, target.server, opts.duration, clients, opts.timeout_ms, opts.engine,
                        prime=opts.warmup <= 0)
    raw = probes.collect(lab.answered(load)) if probes is not None else {}
    after = Reading.take(target.pid)
    if flame_thread is not None:
        flame_thread.join(timeout=opts.duration + 60)
    window = window_record(opts, target, scenario, repeat, load, raw, before, after)
    if flame_dir is not None:
        window["profile"] = flame
    return window


def window_record(opts: LabOptions, target: Target, scenario: str, repeat: int, load: dict, raw: dict,
                  before: Reading, after: Reading) -> dict:
    """The window's JSON from its load result, probe results and the readings around it."""
    if before.server is None or after.server is None:
        raise ToolError(f"server pid {target.pid} exited during the {scenario} window", EXIT_TARGET)
    queries = lab.answered(load)
    elapsed = max(after.t - before.t, 1e-6)
    server_cpu = after.server - before.server
    own_cpu = after.own - before.own
    return {
        "schema": WINDOW_SCHEMA,
        "scenario": scenario,
        "repeat": repeat,
        "started": datetime.fromtimestamp(time.time() - (time.monotonic() - before.t), timezone.utc)
                           .isoformat(timespec="seconds"),
        "params": {"server": target.server, "clients": lab.clients_for(scenario, opts.clients),
                   "duration_s": opts.duration, "warmup_s": opts.warmup, "timeout_ms": opts.timeout_ms,
                   "engine": opts.engine},
        "load": load,
        "server_cpu": {"cpu_s": round(server_cpu, 4), "cores_used": round(server_cpu / elapsed, 3),
                       "processes": len(process_tree(target.pid)),
                       "cpu_us_per_query": server_cpu * 1e6 / queries if queries else None},
        "environment": {"window_s": round(elapsed, 3),
                        "generator_cpu_cores": round(own_cpu / elapsed, 3),
                        "foreign_cpu_cores": round(max(after.system - before.system - server_cpu - own_cpu, 0.0)
                                                   / elapsed, 3),
                        "cores": psutil.cpu_count()},
        "probes": raw,
        "probes_summary": lab.summarize_probes(raw, queries, elapsed) if raw else {},
    }


def run_windows(opts: LabOptions, target: Target, probes: lab.ProbeSet | None,
                sampler: ResourceSampler | None = None, flame_dir: Path | None = None,
                on_window: Callable[[dict], None] | None = None) -> list[dict]:
    """Every repeat of every scenario, the scenario order rotated each repeat."""
    windows = []
    n = len(opts.scenarios)
    for repeat in range(opts.repeats):
        order = [opts.scenarios[(i + repeat) % n] for i in range(n)]
        for scenario in order:
            if sampler is not None:
                sampler.scenario = scenario
            w = measure_window(opts, target, scenario, repeat, probes, flame_dir)
            windows.append(w)
            if on_window is not None:
                on_window(w)
    if sampler is not None:
        sampler.scenario = ""
    return windows


@contextlib.contextmanager
def attached_probes(target: Target, names: list[str], required: bool,
                    outstanding: bool = False) -> Iterator[tuple[lab.ProbeSet | None, str | None]]:
    """Attach the probe set; when not required, a failure becomes a reason in the results."""
    if not names:
        yield None, None
        return
    probes = lab.ProbeSet(target.pid, names, port=lab.split_server(target.server)[1], outstanding=outstanding)
    try:
        probes.attach()
    except ToolError as exc:
        if required:
            raise
        yield None, str(exc)
        return
    try:
        yield probes, None
    finally:
        probes.close()


def run_bench(opts: LabOptions, say: Callable[[str], None] = print) -> Path:
    """The whole bench: windows, per-scenario JSON, resource_usage.csv, flame graphs, report."""
    from tools.report import write_report

    validate_numbers(opts)
    with open_target(opts) as target:
        out = new_results_dir(opts.results_dir, "bench")
        say(f"bench: {', '.join(opts.scenarios)} against {target.server} (pid {target.pid}), "
            f"{opts.duration:g}s each; results in {out}")
        with attached_probes(target, opts.probes, required=False, outstanding=True) as (probes, unavailable):
            if unavailable:
                say(f"warning: {unavailable}; probe figures will read 'not measured'")
            def done(w: dict) -> None:
                """Each window's JSON is written as soon as it is measured (an interrupted bench keeps them)."""
                name = w["scenario"] + (f"_r{w['repeat']}" if opts.repeats > 1 else "")
                atomic_write_json(out / f"{name}.json", w)
                say(window_line(w))

            with ResourceSampler(target.pid) as sampler:
                try:
                    windows = run_windows(opts, target, probes, sampler, out if opts.flame else None, on_window=done)
                    extra = after_windows(opts, target, sampler, say)
                finally:
                    sampler.write_csv(out / "resource_usage.csv")
    meta = {**extra, "schema": "heimdall.bench/1", **provenance(), "target": target.info, "options": _jsonable(opts),
            "probes_requested": opts.probes, "probes_unavailable": unavailable,
            "scenarios": [w["scenario"] for w in windows]}
    atomic_write_json(out / "bench.json", meta)
    write_report(out / "performance_report.md", windows, meta, resource_rows=sampler.rows)
    return out


def after_windows(opts: LabOptions, target: Target, sampler: ResourceSampler, say: Callable[[str], None]) -> dict:
    """The bench's phases after its windows: memory against cache fill, capacity per scenario."""
    extra: dict = {}
    if opts.cache_fill > 0:
        from tools.memgrowth import cache_growth

        sampler.scenario = "cache-fill"
        extra["memory_growth"] = cache_growth(target.server, target.pid, opts.cache_fill, lab.ZONE)
        say(f"  cache fill: {extra['memory_growth']['bytes_per_entry']} bytes per entry at "
            f"{opts.cache_fill} and {2 * opts.cache_fill} names")
    if opts.capacity:
        from tools.ramp import RampConfig, ramp

        extra["capacity"] = {}
        for scenario in opts.scenarios:
            sampler.scenario = f"capacity-{scenario}"
            r = ramp(RampConfig(server=target.server, test_type=scenario, pid=target.pid, zone=lab.ZONE,
                                clients=lab.clients_for(scenario, opts.clients), budget_s=60.0))
            extra["capacity"][scenario] = {k: r[k] for k in ("capacity_qps", "limit", "saturation", "knee", "elapsed_s")}
            say(f"  capacity {scenario}: {r['capacity_qps']} q/s ({r['limit']})")
    sampler.scenario = ""
    return extra


def window_line(w: dict) -> str:
    load = w["load"]
    lat = load.get("latency_us") or {}
    return (f"  {w['scenario']:<17} r{w['repeat']}: {load.get('qps', 0):>9.0f} q/s  avg {lat.get('avg', 0):>8.0f} us"
            f"  p99 {lat.get('p99', 0):>8.0f} us  server CPU {w['server_cpu'].get('cpu_us_per_query') or 0:.1f} us/q")


def _jsonable(opts: LabOptions) -> dict:
    d = asdict(opts)
    d["results_dir"] = str(opts.results_dir)
    return d
