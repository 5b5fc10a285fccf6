"""Folded stacks -> flame graph SVG, and the hottest frames.

py-spy writes one format per run, so cpuprof records once as folded ("raw")
stacks and draws the SVG here; the same folded data feed the top-N table, so
the SVG, the .folded file and the table always describe the same samples.
"""

from __future__ import annotations

import html
import zlib
from dataclasses import dataclass, field
from typing import Any

ROW_H = 16
WIDTH = 1200
FONT_W = 7.0   # average glyph width at font-size 12, for label truncation


@dataclass
class Node:
    """One frame in the merged call tree; `count` includes its children."""

    name: str
    count: int = 0
    children: dict[str, "Node"] = field(default_factory=dict)


def parse_folded(text: str) -> dict[tuple[str, ...], int]:
    """`a;b;c 42` lines -> {(a, b, c): 42}; lines without a count are skipped."""
    stacks: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        stack, _, num = line.strip().rpartition(" ")
        if not num.isdigit():
            continue
        key = tuple(stack.split(";")) if stack else ("[no frame]",)
        stacks[key] = stacks.get(key, 0) + int(num)
    return stacks


def to_folded(stacks: dict[tuple[str, ...], int]) -> str:
    return "".join(f"{';'.join(k)} {v}\n" for k, v in sorted(stacks.items()))


def build_tree(stacks: dict[tuple[str, ...], int]) -> Node:
    root = Node("all")
    for frames, n in stacks.items():
        root.count += n
        node = root
        for f in frames:
            node = node.children.setdefault(f, Node(f))
            node.count += n
    return root


def top_frames(stacks: dict[tuple[str, ...], int], n: int = 15) -> list[dict]:
    """Hottest frames: self = samples where the frame is the leaf, total = on the stack."""
    total = sum(stacks.values()) or 1
    self_c: dict[str, int] = {}
    tot_c: dict[str, int] = {}
    for frames, c in stacks.items():
        if not frames:
            continue
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + c
        for f in set(frames):   # recursion counts once per sample
            tot_c[f] = tot_c.get(f, 0) + c
    rows: list[dict[str, Any]] = [{"frame": f, "self_samples": self_c.get(f, 0), "total_samples": t,
                                   "self_pct": round(100.0 * self_c.get(f, 0) / total, 2),
                                   "total_pct": round(100.0 * t / total, 2)} for f, t in tot_c.items()]
    rows.sort(key=lambda r: (-r["self_samples"], -r["total_samples"], r["frame"]))
    return rows[:n]


def _color(name: str) -> str:
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{(h >> 8) % 180},{(h >> 16) % 55})"


def render_svg(stacks: dict[tuple[str, ...], int], title: str) -> str:
    """A static flame graph (root at the bottom; hover a box for its share)."""
    root = build_tree(stacks)
    depth = _depth(root)
    height = (depth + 1) * ROW_H + 40
    total = root.count or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="Verdana" font-size="12">',
           '<rect width="100%" height="100%" fill="#f8f8f8"/>',
           f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15">{html.escape(title)}</text>']

    def draw(node: Node, x: float, level: int) -> None:
        w = WIDTH * node.count / total
        if w < 0.3:
            return
        y = height - (level + 1) * ROW_H - 4
        pct = 100.0 * node.count / total
        label = html.escape(node.name)
        out.append(f'<g><title>{label} ({node.count} samples, {pct:.2f}%)</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW_H - 1}" '
                   f'fill="{_color(node.name)}" rx="2"/>')
        chars = int((w - 6) / FONT_W)
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[:chars - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + ROW_H - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += WIDTH * child.count / total

    draw(root, 0.0, 0)
    out.append("</svg>\n")
    return "\n".join(out)


def _depth(node: Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)
