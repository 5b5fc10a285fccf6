"""The heimdall.load/1 result: per-process counters folded into one JSON-ready dictionary.

Shared by both engines (the built-in generator and dnsperf), so a result
reads the same whichever ran; warnings say when the generator, not the
server, may have been the limit.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools import latency
from tools.load_worker import COUNTER_NAMES
from tools.scenarios import KIND_NAMES, RCODE_NAMES

if TYPE_CHECKING:
    from tools.loadgen import LoadConfig, LoadRun

SCHEMA = "heimdall.load/1"
BUSY_SATURATED = 0.90          # a process busy this much of the window is the bottleneck


def connection_totals(cfg: "LoadConfig", parts: list[dict]) -> dict | None:
    """The stream clients' connection counts over every process (None over UDP or from dnsperf)."""
    stats = [p["connections"] for p in parts if p.get("connections")]
    if not stats:
        return None
    out: dict[str, Any] = {k: sum(s[k] for s in stats) for k in stats[0]}
    out["queries_per_connection"] = cfg.queries_per_connection
    out["first_error"] = next((p["first_error"] for p in parts if p.get("first_error")), None)
    return out


def build_result(run: "LoadRun", parts: list[dict], engine: str, extra: dict | None = None) -> dict:
    """Fold the per-process results into the heimdall.load/1 dictionary."""
    cfg = run.cfg
    tot = {name: sum(p["counters"][name] for p in parts) for name in COUNTER_NAMES}
    rc = [sum(p["rcodes"][i] for p in parts) for i in range(len(parts[0]["rcodes"]))] if parts else []
    counts = latency.merge_counts([p["latency_counts"] for p in parts])
    window = max((p["window_s"] for p in parts), default=0.0)
    interrupted = run.interrupted or any(p.get("interrupted") for p in parts)
    duration = window if (interrupted or engine != "builtin") else cfg.duration
    sent, received = tot["sent"], tot["received"]
    rcodes: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for i, n in enumerate(rc):
        if n:
            kind, code = KIND_NAMES[i // 16], i % 16
            name = RCODE_NAMES[code] if code < len(RCODE_NAMES) else f"RCODE{code}"
            rcodes[name] = rcodes.get(name, 0) + n
            by_kind.setdefault(kind, {})[name] = n
    rcode_errors = received - tot["successes"]
    errors = rcode_errors + tot["send_errors"]
    busy = [round(p["cpu_s"] / p["window_s"], 3) if p["window_s"] > 0 else 0.0 for p in parts]
    waited = [round(p.get("runqueue_wait_s", 0.0) / p["window_s"], 3) if p["window_s"] > 0 else 0.0 for p in parts]
    warnings: list[str] = []
    saturated = overloaded = False
    if engine == "builtin":
        if cfg.qps is None and any(b >= BUSY_SATURATED for b in busy):
            saturated = True
            warnings.append(f"generator saturated: a load process was busy {max(busy):.0%} of the window, "
                            "so the figures may measure the generator, not the server")
        if max(waited, default=0) >= 0.2:
            overloaded = True
            warnings.append(f"machine overloaded: a load process waited for a CPU {max(waited):.0%} of the "
                            "window; latencies include that wait")
        if cfg.qps is not None and duration > 0 and sent < 0.97 * cfg.qps * duration:
            saturated = True
            warnings.append(f"generator saturated: offered {cfg.qps:.0f} q/s but sent only "
                            f"{sent / duration:.0f} q/s")
    if extra:
        extra = dict(extra)
        saturated = saturated or bool(extra.pop("generator_saturated", False))
        warnings.extend(extra.pop("warnings", []))
    if run.bad_lines:
        warnings.append(f"{len(run.bad_lines)} bad lines skipped in {cfg.queries_file}")
    conns = connection_totals(cfg, parts)
    if conns and conns["handshake_failures"] + conns["connect_failures"]:
        warnings.append(f"{conns['handshake_failures']} TLS handshakes and {conns['connect_failures']} connects "
                        f"failed (first: {conns['first_error']})")
    if sent and received == 0:
        warnings.append(f"no replies from {cfg.server}: is the server running?")
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "engine": engine,
        "test_type": cfg.test_type,
        "server": cfg.server,
        "transport": cfg.transport,
        "mode": "closed" if cfg.qps is None else "open",
        "offered_qps": cfg.qps,
        "duration_s": round(duration, 6),
        "warmup_s": cfg.warmup,
        "timeout_ms": cfg.timeout_ms,
        "clients": run.clients,
        "processes": run.processes,
        "zone": cfg.zone,
        "queries_file": str(cfg.queries_file) if cfg.queries_file else None,
        "qps": round(received / duration, 3) if duration > 0 else 0.0,
        "sent": sent,
        "received": received,
        "successes": tot["successes"],
        "timeouts": tot["timeouts"],
        "errors": errors,
        "rcode_errors": rcode_errors,
        "send_errors": tot["send_errors"],
        "icmp_errors": tot["icmp_errors"],
        "late": tot["late"],
        "mismatched": tot["mismatched"],
        "response_rate": round(received / sent, 6) if sent else 0.0,
        "success_rate": round(tot["successes"] / sent, 6) if sent else 0.0,
        "error_rate": round(errors / sent, 6) if sent else 0.0,
        "rcodes": rcodes,
        "rcodes_by_kind": by_kind,
        "latency_us": latency.summarize(counts),
        "histogram": latency.histogram_json(counts),
        "generator": {
            "busy_per_process": busy,
            "runqueue_wait_per_process": waited,
            "cpu_percent": round(100 * sum(p["cpu_s"] for p in parts) / window, 1) if window else 0.0,
            "cpu_us_per_query": round(1e6 * sum(p["cpu_s"] for p in parts) / received, 2) if received else None,
            "max_schedule_lag_ms": round(max((p["max_lag_ms"] for p in parts), default=0.0), 3),
            "host_cpu_percent": run.host_cpu_percent,
        },
        "generator_saturated": saturated,
        "machine_overloaded": overloaded,   # load processes waited >= 20 % of the window for a CPU
        "warnings": warnings,
        "primed": run.primed,
        "start_late_s": round(run.start_late_s, 4),
        "bad_lines": [{"line": n, "error": why} for n, why in run.bad_lines],
        "interrupted": interrupted,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    if conns:
        result["connections"] = conns
    if cfg.kernel_timestamps and engine == "builtin":
        kcounts = latency.merge_counts([p.get("kernel_latency_counts", {}) for p in parts])
        klat = latency.summarize(kcounts)
        result["kernel_latency_us"] = klat
        ulat = result["latency_us"]
        own = (round(ulat["avg"] - klat["avg"], 1) if ulat["avg"] is not None and klat["avg"] is not None
               else None)
        result["generator"]["own_delay_us"] = own
        if own is not None and own > 0.5 * ulat["avg"]:
            warnings.append(f"the generator's own delay ({own:,.0f} us) is over half the measured average "
                            "latency: see kernel_latency_us for the server's share")
    if cfg.test_type == "blocking":
        result["blocking"] = {"blocked_replies": sum(by_kind.get("blocked", {}).values()),
                              "zero_ip_answers": tot["blocked_zero_ip"],
                              "forwarded_answers": tot["blocked_forwarded"],
                              "rcodes": by_kind.get("blocked", {})}
    if extra:
        result.update(extra)
    return result
