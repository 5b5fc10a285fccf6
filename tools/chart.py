"""PNG charts (matplotlib, Agg backend: no display needed), written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from heimdall.atomic import atomic_write_bytes


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def compare_chart(report: dict, path: Path) -> Path:
    """One panel per metric: each contestant's median as a bar, min-max over rounds as the error bar."""
    plt = _pyplot()
    names = [c["name"] for c in report["contestants"]]
    metrics = [m for m in report["metrics"] if any(report["stats"][n][m] for n in names)]
    cols = 4
    rows = max(1, -(-len(metrics) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    colors = {"heimdall": "#1f77b4", "unbound": "#ff7f0e", "dnsmasq": "#2ca02c"}
    for ax, m in zip(axes.flat, metrics):
        meta = report["metrics"][m]
        med, lo, hi = [], [], []
        for n in names:
            s = report["stats"][n][m]
            med.append(s["median"] if s else 0.0)
            lo.append(s["median"] - s["min"] if s else 0.0)
            hi.append(s["max"] - s["median"] if s else 0.0)
        bars = ax.bar(names, med, yerr=[lo, hi], capsize=4,
                      color=[colors.get(n.split("/")[0], "#7f7f7f") for n in names])
        for b, n in zip(bars, names):
            r = report["ratios_to_heimdall"].get(n, {}).get(m)
            if r:
                ax.annotate(f"H/{r['ratio_of_medians']:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_title(f"{meta['label']}\n({meta['unit']}, {'higher' if meta['higher_is_better'] else 'lower'} "
                     "is better)", fontsize=8)
        if meta["unit"] == "us" and min(med) > 0:
            ax.set_yscale("log")  # one slow round must not flatten the others
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", labelrotation=30)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"Heimdall side by side: medians over {report['options']['rounds']} rounds, "
                 f"bars = min-max ({report['started']})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def history_chart(labels: list[str], series: dict[str, list[tuple[int, float]]], title: str, ylabel: str,
                  path: Path) -> Path:
    """A metric over runs, as asv publishes it: x = the runs in order, labelled by commit; one line
    per scenario, a point per run that measured it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.6 * len(labels) + 3, 20.0)), 4.5))
    for scenario, points in series.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=scenario)
    step = max(1, -(-len(labels) // 30))  # at most 30 labels: a long history stays legible
    ticks = list(range(0, len(labels), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[i] for i in ticks], rotation=45, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ys = [y for points in series.values() for _, y in points]
    if ys and min(ys) >= 0 and max(ys) > 0:
        ax.set_ylim(0, max(ys) * 1.15)  # from zero: a change looks as big as it is
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
