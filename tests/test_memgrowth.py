"""The bench's memory-growth indicator against responders whose memory per name is known: one that keeps
a fixed number of bytes per new name (linear), one that keeps more for each name than the one before
(growing faster than the cache), and one that keeps nothing (no cache: not judged)."""

from __future__ import annotations

from targets.busy_responder import Responder
from tools.memgrowth import cache_growth, report_lines

N, KEEP = 2000, 2000


def test_fixed_bytes_per_name_is_linear_and_costs_that_much():
    with Responder(10, keep_bytes=KEEP) as r:
        g = cache_growth(r.server, r.pid, N)
    assert g["answered"] == [N, N]
    # each entry: its KEEP bytes plus the key, the object headers and a dict slot (~100-200 bytes)
    for per in g["bytes_per_entry"]:
        assert KEEP <= per <= 1.5 * KEEP, g
    assert g["linear"] is True
    assert g["projected_1m_entries_bytes"] >= KEEP * 1_000_000
    assert "| PASS |" in report_lines(g, {})[2]


def test_entries_that_grow_with_the_cache_fail_the_indicator():
    # the nth name keeps KEEP/2 * (1 + n // 500): the first N average 2.5 units, the next N 6.5
    with Responder(10, keep_bytes=KEEP // 2, keep_growing=True) as r:
        g = cache_growth(r.server, r.pid, N)
    assert 2.0 < g["second_to_first"] < 3.5, g
    assert g["linear"] is False
    assert "| FAIL |" in report_lines(g, {})[2]


def test_a_server_without_a_cache_is_not_judged():
    with Responder(10) as r:
        g = cache_growth(r.server, r.pid, N)
    assert g["answered"] == [N, N]
    assert g["linear"] is None and g["second_to_first"] is None
    assert "not measured" in report_lines(g, {})[2]
