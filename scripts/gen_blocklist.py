#!/usr/bin/env python3
"""Write a synthetic blocklist of N distinct domains for benchmarks and tests.

Names are deterministic (``blk<i>.<word>.<tld>``-like, 15-30 bytes, the
length of real ad/tracker names) so a load generator can ask for blocked names
by index: ``name(i)``. ``--format mixed`` cycles hosts, plain, ABP and
wildcard lines like a merged real-world list; the others write one format.

    python scripts/gen_blocklist.py /tmp/block-1m.txt -n 1000000
"""

from __future__ import annotations

import argparse

_WORDS = ("ads", "track", "pixel", "metrics", "cdn", "beacon", "stats", "telemetry", "banner", "click")
_TLDS = ("com", "net", "org", "io", "test")


def name(i: int) -> str:
    """The i-th generated blocked domain."""
    return f"blk{i}.{_WORDS[i % 10]}-{i % 997}.{_TLDS[i % 5]}"


def line(i: int, fmt: str) -> str:
    n = name(i)
    if fmt == "mixed":
        fmt = ("hosts", "plain", "abp", "plain")[i % 4]
    if fmt == "hosts":
        return f"0.0.0.0 {n}"
    if fmt == "abp":
        return f"||{n}^"
    return n


def write_blocklist(path: str, n: int, fmt: str = "mixed") -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write("# synthetic blocklist written by scripts/gen_blocklist.py\n")
        for start in range(0, n, 10000):
            f.write("\n".join(line(i, fmt) for i in range(start, min(n, start + 10000))))
            f.write("\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("-n", type=int, default=1_000_000, help="number of domains")
    p.add_argument("--format", choices=("mixed", "hosts", "plain", "abp"), default="mixed")
    a = p.parse_args()
    write_blocklist(a.path, a.n, a.format)


if __name__ == "__main__":
    main()
