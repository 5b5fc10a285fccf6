"""The side-by-side report files: compare.md (Markdown), compare.json and the chart."""

from __future__ import annotations

from pathlib import Path

from tools.files import write_json, write_text


def render_markdown(report: dict) -> str:
    """compare.md: the metrics table (median, spread, ratio to Heimdall), skipped peers, the goals."""
    lines = [f"# Heimdall side by side ({report['started']}, {report['options']['rounds']} rounds x "
             f"{report['options']['duration_s']:g} s, {report['host']['cpus']} cores, load "
             f"{report['host']['load_average'][0]:.1f})", ""]
    transports = list(dict.fromkeys(c.get("transport", "udp") for c in report["contestants"]))
    for t in transports:
        if transports != ["udp"]:
            lines += [f"## over {t}", ""]
        lines += metric_table(report, [c["name"] for c in report["contestants"] if c.get("transport", "udp") == t])
        lines.append("")
    lines += ["Cells: median (min-max over rounds); H/peer = Heimdall's median over the peer's.", ""]
    for c in report["contestants"]:
        cap = c.get("capacity")
        if cap:
            lines.append(f"- {c['name']} cache-hit capacity (open-loop ramp): "
                         + (f"{cap['capacity_qps']:,.0f} q/s" if cap["capacity_qps"] else "no step held")
                         + f", stopped on {cap['limit']}; {cap['saturation']}")
    for s in report["skipped"]:
        lines.append(f"- skipped {s['peer']}" + (f" over {s['transport']}" if s.get("transport") else "")
                     + f": {s['why']}")
    lines += ["", "## Goals", "", "| goal | measured | pass | how |", "|---|---|---|---|"]
    for g in report["goals"]:
        ok = {True: "pass", False: "FAIL", None: "n/a"}[g["pass"]]
        lines.append(f"| {g['goal']} | {g['measured'] if g['measured'] is not None else 'not measured'} | {ok} | {g['how']} |")
    return "\n".join(lines) + "\n"


def metric_table(report: dict, names: list[str]) -> list[str]:
    """The metrics table of some rows: median (spread); ratio to Heimdall over the same transport."""
    lines = ["| metric | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for m, meta in report["metrics"].items():
        if not any(report["stats"][n][m] for n in names):
            continue  # not measured in this run (another engine or workload)
        cells = []
        for n in names:
            s = report["stats"][n][m]
            cell = "-" if not s else f"{s['median']:,.1f} ({s['min']:,.1f}-{s['max']:,.1f})"
            r = report["ratios_to_heimdall"].get(n, {}).get(m)
            if r:
                cell += f"; H/{n} {r['ratio_of_medians']:.2f}"
            cells.append(cell)
        lines.append(f"| {meta['label']} ({meta['unit']}) | " + " | ".join(cells) + " |")
    return lines


def write_report(report: dict, out_dir: Path) -> None:
    """compare.json, compare.md and compare.png, each written atomically."""
    from tools.chart import compare_chart

    write_json(out_dir / "compare.json", report)
    write_text(out_dir / "compare.md", render_markdown(report))
    compare_chart(report, out_dir / "compare.png")
