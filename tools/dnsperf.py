"""The dnsperf engine: the same scenario and the same JSON, measured by DNS-OARC's dnsperf.

dnsperf 2.10 (Debian 12) has no latency histogram option, but `-v` prints one
line per answered query ("> NOERROR name A 0.000123"); we fold those lines
into the same HdrHistogram the built-in engine fills, so percentiles exist
for both engines. dnsperf prints latencies with 1 us resolution, so the
percentiles are accurate to 1 us (1 % at 100 us and above). What dnsperf
cannot tell us is listed in `unavailable` (late and mismatched replies, ICMP
errors, per-process busy time). `-v` costs dnsperf some throughput; its CPU
time (from RUSAGE_CHILDREN) is reported so a saturated dnsperf shows.

Mapping: `--clients N` -> `-c min(N, 256) -q N` (N queries outstanding, as N
closed-loop clients), `--qps` -> `-Q`, `--timeout` -> `-t`, `--processes` ->
`-T`. Warm-up is a separate unmeasured dnsperf run before the measured one.
`--transport tcp|dot|doh` -> `-m` (DoH: `-O doh-uri=https://NAME:PORT/dns-query
-O doh-method=POST`), `--queries-per-connection N` -> `-O num-queries-per-conn=N`.
dnsperf verifies no certificate: over DoT and DoH it trusts any server.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.latency import quantize
from tools.scenarios import KIND_NAMES, RCODE_NAMES, SUCCESS_RCODES, decode_question

MAX_LINES = 2_000_000          # cap on generated query-file lines (unique-name scenarios; dnsperf
                               # starts over at the top when it runs out, so names can repeat beyond it)
EST_RATE = 60_000              # closed-loop rate assumed when sizing a unique-name file
UNAVAILABLE = ["late", "mismatched", "icmp_errors", "send_errors", "generator.busy_per_process",
               "blocking.zero_ip_answers", "blocking.forwarded_answers"]
_NUM = r"([0-9.]+)"


def dnsperf_binary() -> str:
    path = shutil.which("dnsperf")
    if not path:
        raise ToolError("dnsperf is not installed: run scripts/setup.sh (apt-get install dnsperf)",
                        EXIT_ENVIRONMENT)
    return path


def write_query_file(run: Any, path: Path, seconds: float, stream: Any) -> dict[str, int]:
    """The scenario as dnsperf input; returns name -> kind for the names that are not normal.

    Scenarios with unique names draw `seconds` worth of queries from `stream`, so
    the warm-up file and the measured file never share a unique name.
    """
    cfg, sc = run.cfg, run.scenario
    kinds: dict[str, int] = {}
    if sc.unique_every:
        rate = cfg.qps or EST_RATE
        n = int(min(MAX_LINES, max(1000, rate * seconds * 1.2)))
        items = (stream.next() for _ in range(n))
    else:
        items = iter(sc.fixed)
    with open(path, "w") as f:
        for q, kind in items:
            name, qtype = decode_question(q)
            if kind != 0:
                kinds[name.lower()] = kind
            f.write(f"{name} {qtype}\n")
    return kinds


def _command(run: Any, qfile: Path, seconds: float, verbose: bool) -> list[str]:
    cfg = run.cfg
    host, port = run.sockaddr[0], run.sockaddr[1]
    cmd = [dnsperf_binary(), "-s", host, "-p", str(port), "-d", str(qfile), "-l", f"{seconds:g}",
           "-c", str(min(run.clients, 256)), "-q", str(run.clients), "-t", f"{cfg.timeout_ms / 1000:g}",
           "-T", str(run.processes), "-W"]
    if cfg.qps:
        cmd += ["-Q", f"{cfg.qps:g}"]
    cmd += transport_args(cfg.transport, cfg.queries_per_connection, cfg.tls_server_name or host, port)
    if verbose:
        cmd.append("-v")
    return cmd


def transport_args(transport: str, per_connection: int, server_name: str, port: int) -> list[str]:
    """dnsperf's flags for a transport: `-m`, DoH's URI and method, the queries per connection.

    DoH asks with GET: dnsperf's POST client caps every server near 3-4k q/s on this machine
    (Heimdall 3.9k, Unbound 3.2k), so POST would measure dnsperf; the built-in engine POSTs.
    dnsperf checks no certificate, so --ca-file means nothing to it."""
    if transport == "udp":
        return []
    args = ["-m", transport]
    if transport == "doh":
        host = f"[{server_name}]" if ":" in server_name else server_name
        args += ["-O", f"doh-uri=https://{host}:{port}/dns-query", "-O", "doh-method=GET"]
    if per_connection:
        args += ["-O", f"num-queries-per-conn={per_connection}"]
    return args


def _run(cmd: list[str], out: Path, seconds: float, timeout_s: float) -> tuple[int, float]:
    """Run dnsperf to `out`; returns (exit status, CPU seconds it used)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=seconds + timeout_s + 30)
        except KeyboardInterrupt:
            proc.send_signal(2)  # dnsperf prints its statistics on SIGINT
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ToolError("dnsperf did not finish in time", EXIT_ENVIRONMENT) from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, cpu


def parse_summary(text: str) -> dict[str, Any]:
    """dnsperf's 'Statistics:' block -> sent, completed, lost, rcodes, run_time, qps, avg/min/max."""
    def num(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    sent = num(r"Queries sent:\s+" + _NUM)
    if sent is None:
        raise ToolError("dnsperf printed no statistics: " + text.strip().splitlines()[-1][:200]
                        if text.strip() else "dnsperf printed nothing", EXIT_ENVIRONMENT)
    rcodes: dict[str, int] = {}
    m = re.search(r"Response codes:\s*(.*)", text)
    if m:
        for name, n in re.findall(r"([A-Z0-9]+) (\d+) \(", m.group(1)):
            rcodes[name] = int(n)
    lat = re.search(r"Average Latency \(s\):\s+" + _NUM + r" \(min " + _NUM + r", max " + _NUM + r"\)", text)
    return {
        "sent": int(sent),
        "completed": int(num(r"Queries completed:\s+" + _NUM) or 0),
        "lost": int(num(r"Queries lost:\s+" + _NUM) or 0),
        "run_time": num(r"Run time \(s\):\s+" + _NUM) or 0.0,
        "qps": num(r"Queries per second:\s+" + _NUM) or 0.0,
        "rcodes": rcodes,
        "avg_s": float(lat.group(1)) if lat else None,
        "min_s": float(lat.group(2)) if lat else None,
        "max_s": float(lat.group(3)) if lat else None,
        "stddev_s": num(r"Latency StdDev \(s\):\s+" + _NUM),
    }


def parse_verbose(path: Path, kinds: dict[str, int]) -> tuple[dict[int, int], list[int], int]:
    """Per-query '> RCODE name type seconds' lines -> (latency counts in ns, rcodes by kind, successes)."""
    lat: dict[int, int] = {}
    rc = [0] * (16 * len(KIND_NAMES))
    index = {name: i for i, name in enumerate(RCODE_NAMES)}
    successes = 0
    with open(path, errors="replace") as f:
        for line in f:
            if not line.startswith("> "):
                continue
            parts = line.split()
            if len(parts) < 5:
                continue
            code = index.get(parts[1], 15)
            kind = kinds.get(parts[2].lower().rstrip(".") + ".", 0) if kinds else 0
            rc[kind * 16 + code] += 1
            if code in SUCCESS_RCODES[kind]:
                successes += 1
            ns = quantize(round(float(parts[-1]) * 1e9))
            lat[ns] = lat.get(ns, 0) + 1
    return lat, rc, successes


def run_dnsperf(run: Any, progress: bool = False) -> dict:
    """Prime, warm up, run dnsperf for the window, and fold its output into heimdall.load/1."""
    from tools.load_result import build_result
    from tools.loadgen import primes_over_udp
    from tools.priming import prime

    cfg = run.cfg
    work = Path(tempfile.mkdtemp(prefix="heimdall-dnsperf-"))
    try:
        if primes_over_udp(cfg) and run.scenario.prime:
            run.primed = prime(run.family, run.sockaddr, run.scenario.prime, min(cfg.timeout_ms / 1000, 2.0))
        stream = run.scenario.stream(0, 1)
        if cfg.warmup > 0:
            wfile = work / "warmup-queries.txt"
            write_query_file(run, wfile, cfg.warmup, stream)
            _run(_command(run, wfile, cfg.warmup, False), work / "warmup.txt", cfg.warmup, cfg.timeout_ms / 1000)
        qfile = work / "queries.txt"
        kinds = write_query_file(run, qfile, cfg.duration, stream)
        cmd = _command(run, qfile, cfg.duration, True)
        status, cpu = _run(cmd, work / "out.txt", cfg.duration, cfg.timeout_ms / 1000)
        text = _tail_text(work / "out.txt")
        summary = parse_summary(text)
        lat, rc, successes = parse_verbose(work / "out.txt", kinds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    window = summary["run_time"] or cfg.duration
    busy = round(cpu / window, 3) if window else 0.0
    warnings = []
    saturated = busy >= 0.9 * run.processes
    if saturated:
        warnings.append(f"generator saturated: dnsperf used {busy:.0%} of a core per thread over the window")
    part = {
        "counters": {"sent": summary["sent"], "received": summary["completed"], "timeouts": summary["lost"],
                     "late": 0, "mismatched": 0, "send_errors": 0, "icmp_errors": 0, "successes": successes,
                     "blocked_zero_ip": 0, "blocked_forwarded": 0},
        "rcodes": rc, "latency_counts": lat, "cpu_s": cpu, "window_s": window, "max_lag_ms": 0.0,
        "interrupted": status not in (0,) and summary["sent"] > 0 and window < cfg.duration * 0.99,
    }
    extra = {
        "dnsperf": {"command": " ".join(cmd), "exit_status": status, "summary": summary,
                    "cpu_s": round(cpu, 3), "version": _version()},
        "unavailable": UNAVAILABLE,
        "generator_saturated": saturated,
        "warnings": warnings,
    }
    result = build_result(run, [part], engine="dnsperf", extra=extra)
    result["generator"]["busy_per_process"] = None
    result["generator"]["runqueue_wait_per_process"] = None
    return result


def _tail_text(path: Path, limit: int = 8192) -> str:
    """The last few KB of dnsperf's output: where its statistics block is."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - limit))
        return f.read().decode(errors="replace")


def _version() -> str | None:
    try:
        out = subprocess.run([dnsperf_binary(), "-h"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Version ([0-9.]+)", out.stdout + out.stderr)
    return m.group(1) if m else None
