"""`heimdall-tools compare`: Heimdall side by side with Unbound, dnsmasq or servers given by address."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer


def compare(
    peers: str = typer.Option("unbound,dnsmasq,pdns-recursor,dnsdist", "--peers",
                              help="comma list of unbound,dnsmasq,pdns-recursor,dnsdist (or 'none')"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="interleaved rounds (order rotates each round)"),
    duration: float = typer.Option(5.0, "--duration", min=0.5, help="seconds per workload per round"),
    workers: int = typer.Option(1, "--workers", min=1, help="server threads/processes each (dnsmasq: always 1)"),
    cache_entries: int = typer.Option(100_000, "--cache-entries", min=1000, help="cache size given to every server"),
    server: Optional[List[str]] = typer.Option(None, "--server", help="also measure a running server, [NAME=]HOST:PORT (repeatable)"),
    pid: Optional[List[int]] = typer.Option(None, "--pid", help="the --server's pid, same order (CPU and memory)"),
    concurrency: str = typer.Option("", "--concurrency", help="comma list of closed-loop client counts, e.g. 1000,10000"),
    fill: int = typer.Option(0, "--fill", min=0, help="then cache this many unique names: RSS per entry"),
    capacity: bool = typer.Option(False, "--capacity", help="then ramp each server's cache-hit rate to its capacity (~1 min each)"),
    scaling: bool = typer.Option(False, "--scaling", help="add Heimdall with twice the workers as a contestant"),
    bare: bool = typer.Option(False, "--bare", help="add a bare uvloop echo responder (the Python floor)"),
    heimdall_env: Optional[List[str]] = typer.Option(
        None, "--heimdall-env",
        help="KEY=VALUE for Heimdall (repeatable), e.g. HEIMDALL_HTTP_BIND_ADDR=127.0.0.1:8081 to measure with metrics on"),
    variant: Optional[List[str]] = typer.Option(
        None, "--variant",
        help="NAME:HEIMDALL_X=Y[,HEIMDALL_Z=W]: an extra Heimdall with these settings (repeatable), e.g. "
             "batch-off:HEIMDALL_UDP_BATCH=off; PYTHONPATH=DIR runs the Heimdall of another checkout "
             "(A/B of two builds), e.g. prev:PYTHONPATH=/tmp/prev"),
    engines: str = typer.Option("dnsperf,builtin", "--engines", help="load generators: dnsperf,builtin"),
    workloads: str = typer.Option("hit", "--workloads",
                                  help="comma list of hit, miss, mixed (miss and mixed: dnsperf, every name once)"),
    transports: str = typer.Option(
        "udp", "--transports",
        help="comma list of udp, tcp, dot, doh: every server measured over each it serves (persistent "
             "connections; DoT/DoH with a throwaway CA); the others are skipped for it with a note"),
    results_dir: Path = typer.Option(Path("performance_results"), "--results-dir", help="parent of the run's <UTC stamp>-compare dir"),
) -> None:
    """Side by side: Heimdall vs Unbound vs dnsmasq, same upstream, same cache, interleaved rounds."""
    from tools.errors import EXIT_ENVIRONMENT, ToolError
    from tools.sidebyside.contestants import parse_variant
    from tools.sidebyside.markdown import render_markdown
    from tools.sidebyside.options import WORKLOADS, CompareOptions
    from tools.sidebyside.run import run_compare
    from tools.stream_clients import TRANSPORTS

    eng = tuple(e.strip() for e in engines.split(",") if e.strip())
    if not eng or set(eng) - {"dnsperf", "builtin"}:
        raise ToolError(f"bad --engines {engines!r}: dnsperf, builtin or both", EXIT_ENVIRONMENT)
    work = tuple(w.strip() for w in workloads.split(",") if w.strip())
    if not work or set(work) - set(WORKLOADS):
        raise ToolError(f"bad --workloads {workloads!r}: a comma list of {', '.join(WORKLOADS)}", EXIT_ENVIRONMENT)
    if set(work) & {"miss", "mixed"} and "dnsperf" not in eng:
        raise ToolError("--workloads miss and mixed are measured with dnsperf: add it to --engines", EXIT_ENVIRONMENT)
    tr = tuple(dict.fromkeys(t.strip() for t in transports.split(",") if t.strip()))
    if not tr or set(tr) - set(TRANSPORTS):
        raise ToolError(f"bad --transports {transports!r}: a comma list of {', '.join(TRANSPORTS)}", EXIT_ENVIRONMENT)
    env = {}
    for kv in heimdall_env or []:
        k, sep, v = kv.partition("=")
        if not sep or not k.startswith("HEIMDALL_"):
            raise ToolError(f"bad --heimdall-env {kv!r}: expected HEIMDALL_NAME=VALUE", EXIT_ENVIRONMENT)
        env[k] = v
    variants: dict[str, dict[str, str]] = {}
    for spec in variant or []:
        vname, var_env = parse_variant(spec)
        if "PYTHONPATH" in var_env and not list((Path(var_env["PYTHONPATH"]) / "heimdall").glob("_hotpath*.so")):
            print(f"note: variant {vname}: the C hot path is not built there (python setup.py build_ext --inplace "
                  "in that checkout): it serves from the Python path", file=sys.stderr)
        variants[vname] = var_env
    opts = CompareOptions(
        peers=[p.strip() for p in peers.split(",") if p.strip() and p.strip() != "none"],
        rounds=rounds, duration=duration, workers=workers, cache_entries=cache_entries,
        servers=list(server or []), pids=list(pid or []),
        concurrency=[int(x) for x in concurrency.split(",") if x.strip()],
        fill=fill, capacity=capacity, scaling=scaling, bare=bare, heimdall_env=env, variants=variants, engines=eng,
        workloads=work, transports=tr, results_dir=results_dir)
    report = run_compare(opts, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(render_markdown(report))
    print(f"results: {report['results_dir']}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
