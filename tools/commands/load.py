"""`heimdall-tools load`: run a load scenario against any DNS server and print/save the figures."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tools.errors import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, ToolError
from tools.files import write_json
from tools.latency import render_distribution


class TestType(str, Enum):
    cache_hit = "cache-hit"
    cache_miss = "cache-miss"
    mixed = "mixed"
    high_concurrency = "high-concurrency"
    blocking = "blocking"
    zipf = "zipf"


class Transport(str, Enum):
    udp = "udp"
    tcp = "tcp"
    dot = "dot"
    doh = "doh"
    doq = "doq"


class Engine(str, Enum):
    builtin = "builtin"
    dnsperf = "dnsperf"


def print_summary(r: dict, console: Console) -> None:
    """The human summary: counts, rates, rcodes, latency figures and the distribution."""
    lat = r["latency_us"]
    t = Table(title=f"{r['test_type']} against {r['server']} over {r.get('transport', 'udp')} "
                    f"({r['engine']}, {r['mode']} loop"
                    + (f", offered {r['offered_qps']:,.0f} q/s" if r["offered_qps"] else "") + ")",
              show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("window", f"{r['duration_s']:.2f} s, {r['clients']} clients, {r['processes']} process(es)"
              + ("  [yellow](interrupted)[/]" if r["interrupted"] else ""))
    t.add_row("queries", f"sent {r['sent']:,}  received {r['received']:,}  timeouts {r['timeouts']:,}  "
              f"errors {r['errors']:,}  late {r['late']:,}  mismatched {r['mismatched']:,}")
    t.add_row("throughput", f"{r['qps']:,.1f} q/s")
    c = r.get("connections")
    if c:
        t.add_row("connections", f"opened {c['opened']:,}  handshake failures {c['handshake_failures']:,}  "
                  f"connect failures {c['connect_failures']:,}  closed by server {c['closed_by_server']:,}  "
                  f"queries lost with a connection {c['lost_with_connection']:,}"
                  + (f"  HTTP errors {c['http_errors']:,}" if c["http_errors"] else ""))
    t.add_row("rates", f"response {r['response_rate']:.2%}  success {r['success_rate']:.2%}  "
              f"error {r['error_rate']:.2%}")
    t.add_row("rcodes", ", ".join(f"{k} {v:,}" for k, v in sorted(r["rcodes"].items())) or "-")
    if lat["avg"] is not None:
        t.add_row("latency us", "  ".join(f"{k} {lat[k]:,.1f}" for k in
                                           ("min", "avg", "p50", "p90", "p95", "p99", "p999", "max")))
    if r.get("blocking"):
        b = r["blocking"]
        t.add_row("blocked names", f"replies {b['blocked_replies']:,}  rcodes {b['rcodes']}  "
                  f"zero-IP answers {b['zero_ip_answers']}  forwarded {b['forwarded_answers']}")
    k = r.get("kernel_latency_us")
    if k and k["avg"] is not None:
        t.add_row("kernel-timed us", "  ".join(f"{n} {k[n]:,.1f}" for n in ("min", "avg", "p50", "p99", "max"))
                  + f"  (generator's own delay {r['generator']['own_delay_us']:,.1f} us)")
    g = r["generator"]
    t.add_row("generator", f"CPU {g['cpu_percent']:.0f}% of a core"
              + (f", busy per process {g['busy_per_process']}" if g.get("busy_per_process") else ""))
    if r.get("primed"):
        t.add_row("primed", f"{r['primed']['answered']}/{r['primed']['questions']} warm-set questions")
    console.print(t)
    console.print("[bold]latency distribution[/] (bucket upper bound, count, cumulative)")
    for line in render_distribution(r["histogram"]):
        console.print(line, highlight=False)
    for n in r["bad_lines"][:20]:
        console.print(f"[yellow]queries file line {n['line']}: {n['error']} (skipped)[/]", highlight=False)
    if len(r["bad_lines"]) > 20:
        console.print(f"[yellow]... and {len(r['bad_lines']) - 20} more bad lines[/]")
    for w in r["warnings"]:
        console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
    if r.get("unavailable"):
        console.print(f"[dim]not measured by this engine: {', '.join(r['unavailable'])}[/]")


def load(
    test_type: TestType = typer.Option(TestType.cache_hit, "--test-type", help="Scenario to run."),
    server: str = typer.Option("127.0.0.1:1053", "--server", help="DNS server under test, HOST:PORT."),
    duration: float = typer.Option(10.0, "--duration", min=0.1, help="Measured window, seconds."),
    clients: int = typer.Option(None, "--clients", min=1, help="Clients (sockets); default 20, high-concurrency 256."),
    timeout: float = typer.Option(1000.0, "--timeout", min=1, help="Query timeout, milliseconds."),
    qps: float = typer.Option(None, "--qps", min=1, help="Open loop at this offered rate (default: closed loop)."),
    warmup: float = typer.Option(1.0, "--warmup", min=0, help="Unmeasured seconds before the window."),
    zone: str = typer.Option("bench.test", "--zone", help="Zone whose names the scenarios ask."),
    queries: Path = typer.Option(None, "--queries", help="dnsperf-format file ('name type' per line)."),
    processes: int = typer.Option(None, "--processes", min=1, help="Generator processes (default: auto)."),
    engine: Engine = typer.Option(Engine.builtin, "--engine", help="builtin or the real dnsperf."),
    json_out: Path = typer.Option(None, "--json", help="Write the result here (atomically)."),
    write_blocklist: Path = typer.Option(None, "--write-blocklist",
                                         help="Write the blocking scenario's blocklist here and exit."),
    blocklist_size: int = typer.Option(1000, "--blocklist-size", min=1, help="Names in the blocklist."),
    warm_set: int = typer.Option(1000, "--warm-set", min=1, help="Names in the cache-hit/mixed warm set."),
    kernel_timestamps: bool = typer.Option(False, "--kernel-timestamps",
                                           help="Also time replies by kernel arrival: shows the generator's own delay."),
    transport: Transport = typer.Option(Transport.udp, "--transport",
                                        help="udp, tcp, dot (DNS over TLS), doh (DNS over HTTPS, HTTP/2 POST) "
                                             "or doq (DNS over QUIC)."),
    queries_per_connection: int = typer.Option(
        0, "--queries-per-connection", min=0,
        help="tcp/dot/doh/doq: queries a connection carries before the client opens a new one; "
             "0 = persistent."),
    tls_server_name: str = typer.Option(None, "--tls-server-name",
                                        help="dot/doh/doq: name sent (SNI) and verified; default the server address."),
    ca_file: Path = typer.Option(None, "--ca-file", help="dot/doh/doq: CA certificate(s) to trust (default: the system's)."),
    insecure: bool = typer.Option(False, "--insecure",
                                  help="dot/doh/doq, lab only: accept any certificate (no verification)."),
    quiet: bool = typer.Option(False, "--quiet", help="No live progress."),
    ramp: bool = typer.Option(False, "--ramp", help="Raise the open-loop rate step by step to the capacity."),
    max_loss: float = typer.Option(1.0, "--max-loss", help="--ramp: a step fails above this loss, percent."),
    max_p99: float = typer.Option(50.0, "--max-p99", help="--ramp: a step fails above this p99, ms."),
    ramp_start: float = typer.Option(500.0, "--ramp-start", help="--ramp: first offered rate, q/s."),
    ramp_max: float = typer.Option(500_000.0, "--ramp-max", help="--ramp: highest offered rate, q/s."),
    ramp_growth: float = typer.Option(2.0, "--ramp-growth", help="--ramp: rate factor per step before the knee."),
    ramp_step: float = typer.Option(3.0, "--ramp-step", help="--ramp: measured seconds per step."),
    ramp_budget: float = typer.Option(110.0, "--ramp-budget", help="--ramp: stop starting steps after this, s."),
    pid: int = typer.Option(None, "--pid", help="--ramp: the server's pid, for its CPU per step."),
    chart: Path = typer.Option(None, "--chart", help="--ramp: write the curve as PNG here."),
) -> None:
    """Drive a DNS server with a scenario; print the figures, optionally save them as JSON."""
    from tools.loadgen import LoadConfig, run_load
    from tools.scenarios import write_blocklist as write_list

    console = Console()
    if ramp:
        if qps is not None:
            raise ToolError("--ramp chooses the rates itself: drop --qps", EXIT_USAGE)
        if transport != Transport.udp:
            raise ToolError("--ramp measures over UDP: drop --transport", EXIT_USAGE)
        from tools.ramp import RampConfig

        cfg_r = RampConfig(server=server, test_type=test_type.value, max_loss=max_loss / 100.0, max_p99_ms=max_p99,
                           start_qps=ramp_start, max_qps=ramp_max, growth=ramp_growth, step_s=ramp_step,
                           budget_s=ramp_budget, timeout_ms=timeout, clients=clients, processes=processes,
                           zone=zone, pid=pid)
        run_ramp(cfg_r, console, json_out, chart)
        return
    if pid is not None or chart is not None:
        raise ToolError("--pid and --chart go with --ramp", EXIT_USAGE)
    if write_blocklist is not None:
        try:
            write_list(write_blocklist, blocklist_size, zone)
        except OSError as exc:
            raise ToolError(f"cannot write {write_blocklist}: {exc.strerror}") from None
        console.print(f"wrote {blocklist_size} blocked domains to {write_blocklist}")
        raise typer.Exit(EXIT_OK)
    cfg = LoadConfig(test_type=test_type.value, server=server, duration=duration, clients=clients,
                     timeout_ms=timeout, qps=qps, warmup=warmup, zone=zone, queries_file=queries,
                     processes=processes, engine=engine.value, warm_set=warm_set, blocklist_size=blocklist_size,
                     kernel_timestamps=kernel_timestamps, transport=transport.value,
                     queries_per_connection=queries_per_connection, tls_server_name=tls_server_name,
                     ca_file=ca_file, insecure=insecure)
    try:
        result = run_load(cfg, progress=not quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        raise ToolError("interrupted before the measuring window opened: nothing measured", 130) from None
    print_summary(result, console)
    if json_out is not None:
        write_json(json_out, result)
        console.print(f"result written to {json_out}")
    if result["received"] == 0:
        conns = result.get("connections") or {}
        if conns.get("handshake_failures") or conns.get("connect_failures"):
            raise ToolError(f"no replies from {server} over {transport.value}: {conns['handshake_failures']:,} TLS "
                            f"handshakes and {conns['connect_failures']:,} connects failed "
                            f"(first: {conns['first_error']})", EXIT_REGRESSION)
        raise ToolError(f"no replies from {server}: {result['timeouts']:,} of {result['sent']:,} queries timed out",
                        EXIT_REGRESSION)


def run_ramp(cfg, console: Console, json_out: Path | None, chart: Path | None) -> None:
    """`load --ramp`: the steps as they finish, then the capacity and who saturated."""
    from tools.loadgen import parse_server
    from tools.ramp import ramp, ramp_chart

    cfg.validate()
    parse_server(cfg.server)
    console.print(f"ramping {cfg.test_type} against {cfg.server}: fail above {cfg.max_loss:.1%} loss or "
                  f"p99 {cfg.max_p99_ms:g} ms", highlight=False)
    try:
        result = ramp(cfg, say=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except KeyboardInterrupt:
        raise ToolError("interrupted: ramp not finished", 130) from None
    cap = result["capacity_qps"]
    console.print(f"capacity: {cap:,.0f} q/s" if cap else "capacity: no step held", highlight=False)
    console.print(f"stopped on: {result['limit']}"
                  + (" (the time budget ran out before the search converged)" if result["out_of_time"] else "")
                  + f"; {result['saturation']} ({result['elapsed_s']:.0f} s)",
                  highlight=False, soft_wrap=True)
    if json_out is not None:
        write_json(json_out, result)
        console.print(f"result written to {json_out}")
    if chart is not None:
        ramp_chart(result, chart)
        console.print(f"chart written to {chart}")
    if not any(s["qps"] for s in result["steps"]):
        raise ToolError(f"no replies from {cfg.server}", EXIT_REGRESSION)


def register(app: typer.Typer) -> None:
    app.command("load")(load)
