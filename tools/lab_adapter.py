"""The one place bench/check touch the rest of the lab: load, servers, probes, py-spy.

Everything here wraps another module's interface (tools.loadgen,
tools.peers, probes.*), so when one of those changes, this file is the only
one to adapt. It also turns the probes' own result layouts
into one normalised summary (`summarize_probes`) that metrics and the report
read.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tools.errors import EXIT_ENVIRONMENT, EXIT_TARGET, ToolError

SCENARIOS = ("cache-hit", "cache-miss", "mixed", "high-concurrency", "blocking")
HIGH_CONCURRENCY_MIN_CLIENTS = 200
DEFAULT_CLIENTS = 20
BLOCKLIST_SIZE = 100_000
ZONE = "bench.test"

# probe set name -> (module, class): one stem per probe (command, module, BPF file, probe set)
PROBES: dict[str, tuple[str, str]] = {
    "lockprof": ("probes.lockprof", "LockProf"),
    "memprof": ("probes.memprof", "MemProf"),
    "netprof": ("probes.netprof", "NetProf"),
}
# the probe set names older baselines (and --probes lists) use
PROBE_ALIASES: dict[str, str] = {"futex": "lockprof", "malloc": "memprof", "udp": "netprof"}


# --- load ---------------------------------------------------------------------------

def clients_for(scenario: str, clients: int | None) -> int:
    """high-concurrency always means 200+ concurrent clients."""
    base = clients or DEFAULT_CLIENTS
    if scenario == "high-concurrency":
        return max(HIGH_CONCURRENCY_MIN_CLIENTS, base * 10 if clients is None else base)
    return base


def run_load(scenario: str, server: str, duration: float, clients: int, timeout_ms: int,
             engine: str = "builtin", warmup: float = 0.0, prime: bool = True,
             start_at_ns: int | None = None) -> dict:
    """One load window via the load generator; returns its heimdall.load/1 dict."""
    from tools import loadgen

    cfg = loadgen.LoadConfig(test_type=scenario, server=server, duration=duration, clients=clients,
                             timeout_ms=timeout_ms, warmup=warmup, zone=ZONE, engine=engine,
                             prime=prime, start_at_ns=start_at_ns)
    result = loadgen.run_load(cfg, progress=False)
    if result.get("interrupted"):
        raise KeyboardInterrupt   # the generator swallowed Ctrl-C/SIGTERM to finish its window; stop here
    return result


def answered(load: dict) -> int:
    return int(load.get("received") or 0)


def check_answers(server: str, timeout: float = 3.0) -> None:
    """Raise EXIT_ENVIRONMENT unless the server answers a real query within `timeout`."""
    import dns.message
    import dns.query

    host, port = split_server(server)
    deadline = time.monotonic() + timeout
    last = "no reply"
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query(f"ping.{ZONE}.", "A"), host, port=port, timeout=0.5)
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not answering yet"
            last = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0]
            time.sleep(0.1)
    raise ToolError(f"server {server} is not answering DNS queries ({last} within {timeout:.0f}s)",
                    EXIT_ENVIRONMENT)


def split_server(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ToolError(f"--server must be HOST:PORT, got {server!r}", EXIT_ENVIRONMENT)
    return host.strip("[]"), int(port)


def check_pid(pid: int) -> None:
    from tools.resources import process_tree

    if pid <= 0 or not process_tree(pid):
        raise ToolError(f"pid {pid} does not exist", EXIT_TARGET)


# --- servers --------------------------------------------------------------------------

@dataclass
class OwnServer:
    """NSD upstream + Heimdall with a large blocklist, both on loopback, both ours to stop."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)   # over Heimdall's (PYTHONPATH: another build)
    wrapper: list[str] = field(default_factory=list)    # a command prefix (valgrind ...)
    start_timeout: float = 15.0
    upstream: Any = None
    server: Any = None

    def start(self) -> "OwnServer":
        from tools import peers
        from tools.nsd import LocalUpstream
        from tools.scenarios import write_blocklist

        blocklist = self.workdir / "blocklist.txt"
        write_blocklist(blocklist, BLOCKLIST_SIZE, ZONE)
        self.upstream = LocalUpstream().start()
        try:
            self.server = peers.HeimdallServer(self.upstream.addr,
                                               env={"HEIMDALL_BLOCKLISTS": str(blocklist), **self.env},
                                               wrapper=self.wrapper)
            self.server.start(timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> str:
        return str(self.server.addr)

    @property
    def pid(self) -> int:
        return int(self.server.pid)

    def describe(self) -> dict:
        return {"kind": "heimdall (started by the lab)", "server": self.address, "pid": self.pid,
                "upstream": f"nsd {self.upstream.addr}", "blocklist_size": BLOCKLIST_SIZE}

    def stop(self) -> None:
        for part in (self.server, self.upstream):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - stopping must not hide the real error
                    pass


# --- probes ---------------------------------------------------------------------------

def parse_probe_names(text: str) -> list[str]:
    """'all', 'none' or a comma list of lockprof,memprof,netprof (older names accepted)."""
    text = (text or "").strip().lower()
    if text in ("", "none"):
        return []
    if text == "all":
        return sorted(PROBES)
    names = canonical_probe_names(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ToolError(f"unknown probe {', '.join(unknown)} (known: {', '.join(PROBES)}, all, none)",
                        EXIT_ENVIRONMENT)
    return names


def canonical_probe_names(names: Iterable[str]) -> list[str]:
    """Sorted, deduplicated probe set names with the older names mapped to the current stems."""
    return sorted({PROBE_ALIASES.get(n, n) for n in names})


@dataclass
class ProbeSet:
    """Several probes attached to one pid's process tree, windows opened and collected together."""

    pid: int
    names: list[str]
    port: int | None = None
    probes: dict[str, Any] = field(default_factory=dict)
    outstanding: bool = False      # memprof also tracks blocks not freed by each window's end

    def attach(self) -> "ProbeSet":
        for name in self.names:
            module, cls = PROBES[name]
            try:
                klass = getattr(importlib.import_module(module), cls)
            except (ImportError, AttributeError) as exc:
                self.close()
                raise ToolError(f"probes unavailable: {name} ({module}.{cls}: {exc})", EXIT_ENVIRONMENT) from None
            opts = {"port": self.port} if name == "netprof" else {}
            if name == "memprof" and self.outstanding:
                opts["outstanding"] = True
            probe = klass(self.pid, **opts)
            try:
                probe.attach()
            except ToolError as exc:
                self.close()
                raise ToolError(f"probes unavailable: {name}: {exc}", exc.exit_code) from None
            self.probes[name] = probe
        return self

    def open_window(self) -> None:
        self.prepare_window()
        self.start_window()

    def prepare_window(self) -> None:
        for probe in self.probes.values():
            probe.prepare_window()

    def start_window(self) -> None:
        for probe in self.probes.values():
            probe.start_window()

    def collect(self, queries: int | None) -> dict[str, dict]:
        return {name: probe.collect(queries=queries) for name, probe in self.probes.items()}

    def close(self) -> None:
        for probe in self.probes.values():
            try:
                probe.close()
            except Exception:  # noqa: BLE001
                pass
        self.probes.clear()


def _num(d: Any, *path: str) -> float | None:
    """d[path[0]][path[1]]... as a float, None when any step is missing."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else None


# probe -> (its per-process figure, the name in facts["processes"])
PROCESS_FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "lockprof": (("futex_waits", "futex_waits"), ("wait_us_total", "futex_wait_us_total")),
    "memprof": (("alloc_calls", "mallocs"), ("alloc_bytes", "malloc_bytes")),
    "netprof": (("datagrams", "datagrams"), ("recv_syscalls", "recv_syscalls"),
                ("send_syscalls", "send_syscalls"), ("drops", "udp_drops")),
}


def summarize_probes(raw: dict[str, dict], queries: int, window_s: float) -> dict:
    """Normalise the probes' results: per-query metrics plus facts the report names.

    facts["pids"] lists every process the probes watched in the window (a
    supervisor and its workers); facts["processes"] has each one's figures."""
    out: dict[str, Any] = {"per_query_metrics": {}, "facts": {}}
    q = max(queries, 1)
    if "lockprof" in raw:
        _summarize_lockprof(raw["lockprof"], q, window_s, out)
    if "memprof" in raw:
        _summarize_memprof(raw["memprof"], q, out)
    if "netprof" in raw:
        _summarize_netprof(raw["netprof"], q, out)
    _summarize_processes(raw, out["facts"])
    return out


def _summarize_processes(raw: dict[str, dict], facts: dict) -> None:
    """Every probe's pids, and per pid its comm and each probe's main figures."""
    pids: set[int] = set()
    procs: dict[str, dict[str, Any]] = {}
    for name, result in raw.items():
        pids.update(int(p) for p in result.get("pids") or [])
        for pid, row in (result.get("processes") or {}).items():
            entry = procs.setdefault(str(pid), {"comm": row.get("comm", "?")})
            for key, label in PROCESS_FIGURES.get(name, ()):
                if key in row:
                    entry[label] = row[key]
    facts["pids"] = sorted(pids)
    facts["processes"] = {pid: procs[pid] for pid in sorted(procs, key=int)}


def _summarize_lockprof(r: dict, q: int, window_s: float, out: dict) -> None:
    """LockProf.read(): result["futex"] holds waits, wait_us_total and the top rows."""
    pq, facts = out["per_query_metrics"], out["facts"]
    waits = _num(r, "futex", "waits")
    wait_us = _num(r, "futex", "wait_us_total")
    if waits is not None:
        pq["futex_waits_per_query"] = waits / q
    if wait_us is not None:
        pq["futex_wait_us_per_query"] = wait_us / q
        facts["futex_wait_share"] = wait_us / 1e6 / window_s if window_s > 0 else None
    facts["futex_waits"] = waits
    facts["futex_wait_us_total"] = wait_us
    top = (r.get("futex") or {}).get("top") or []
    facts["top_lock"] = _lock_label(top[0]) if top else None


def _summarize_memprof(r: dict, q: int, out: dict) -> None:
    """MemProf.read(): result["malloc"] holds the libc layer's calls and bytes."""
    pq, facts = out["per_query_metrics"], out["facts"]
    calls = _num(r, "malloc", "calls")
    nbytes = _num(r, "malloc", "bytes")
    if calls is not None:
        pq["mallocs_per_query"] = calls / q
    if nbytes is not None:
        pq["malloc_bytes_per_query"] = nbytes / q
    facts["mallocs"] = calls
    facts["malloc_bytes"] = nbytes
    live = r.get("outstanding")
    if live:
        facts["outstanding_bytes"] = live["bytes"]
        facts["outstanding_bytes_per_s"] = live["growth"]["bytes_per_s"]
    over = r.get("overhead") or {}
    if over.get("measured"):
        facts["malloc_probe_us_per_call"] = over.get("probe_cost_us_per_call")
        facts["malloc_probe_share"] = over.get("estimated_target_share")


def _summarize_netprof(r: dict, q: int, out: dict) -> None:
    """NetProf.read(): result["udp"] holds syscalls, drops and the receive-queue latency."""
    pq, facts = out["per_query_metrics"], out["facts"]
    recv = _num(r, "udp", "recv_syscalls")
    send = _num(r, "udp", "send_syscalls")
    if recv is not None or send is not None:
        pq["syscalls_per_query"] = ((recv or 0) + (send or 0)) / q
    p99 = _num(r, "udp", "queue_latency_us", "p99")
    if p99 is not None and _num(r, "udp", "queue_latency_us", "count"):
        pq["udp_queue_p99_us"] = p99
    facts["udp_queue_p50_us"] = _num(r, "udp", "queue_latency_us", "p50")
    facts["udp_queue_p99_us"] = p99
    facts["udp_drops"] = _num(r, "udp", "drops")
    facts["datagrams"] = _num(r, "udp", "datagrams")


def _lock_label(top: dict) -> dict:
    """The top futex row reduced to what a report sentence names."""
    stack = top.get("stack") or []
    return {"name": f"{top.get('uaddr', '?')} (tid {top.get('tid', '?')} {top.get('comm', '')}"
                    + (f", {stack[0]}" if stack else "") + ")",
            "waits": top.get("waits"), "wait_us_total": top.get("wait_us_total")}


# --- CPU profile (py-spy) -------------------------------------------------------------

def flame_graph(pid: int, duration: float, out_dir: Path, name: str) -> dict:
    """Sample pid's Python stacks with py-spy for `duration` s: SVG, folded stacks, top frames."""
    from probes import cpuprof

    try:
        res = cpuprof.run_cpuprof(pid, max(1.0, duration), svg=str(Path(out_dir) / f"{name}.svg"),
                                  top=10, render=False)
    except ToolError as exc:
        return {"unavailable": str(exc)}
    py = res.get("python") or {}
    return {"svg": res.get("svg"), "folded": res.get("folded"), "samples": py.get("samples"),
            "rate_hz": res.get("rate_hz"), "partial": res.get("partial"),
            "top_frames": [{"frame": f["frame"], "share": f["self_pct"] / 100, "total_share": f["total_pct"] / 100}
                           for f in py.get("top") or []]}


def own_cpu_seconds() -> float:
    """CPU used by this process and its reaped children (load workers, dnsperf, py-spy)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
