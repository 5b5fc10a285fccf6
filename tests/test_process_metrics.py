"""/metrics carries the standard process_* series for the whole process tree and heimdall_build_info.

The truth is psutil's reading of the same processes, taken around the scrape.
"""

from __future__ import annotations

import platform
import time

import psutil
import pytest

from heimdall import __version__
from heimdall.udp import hot_path_built
from heimdall_server import HeimdallProcess
from test_http_e2e import free_tcp_port, scrape, total


def tree_cpu(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


@pytest.mark.parametrize("workers", [1, 2])
def test_process_series_sum_the_whole_tree(upstream, workers):
    hp = free_tcp_port()
    env = {"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}", "HEIMDALL_WORKER_THREADS": str(workers)}
    with HeimdallProcess([upstream.addr], env=env) as srv:
        root = psutil.Process(srv.pid)
        deadline = time.monotonic() + 15
        while len(root.children()) < (workers if workers > 1 else 0) or (
                workers > 1 and total(m := scrape(hp), "heimdall_workers") < workers):
            assert time.monotonic() < deadline, "workers did not publish their figures"
            time.sleep(0.2)
        procs = [root, *root.children()]
        before = tree_cpu(procs)
        m = scrape(hp)
        after = tree_cpu(procs)
        assert before - 0.02 <= total(m, "process_cpu_seconds_total") <= after + 0.02, (before, m, after)
        rss = sum(p.memory_info().rss for p in procs)
        assert 0.8 * rss <= total(m, "process_resident_memory_bytes") <= 1.25 * rss
        fds = sum(p.num_fds() for p in procs)
        assert abs(total(m, "process_open_fds") - fds) <= 2 * len(procs), (m, fds)
        assert abs(total(m, "process_start_time_seconds") - root.create_time()) < 1.0
        assert total(m, "process_max_fds") > 0
        per = {dict(labels)["pid"]: dict(labels)["role"] for (name, labels) in m
               if name == "heimdall_process_resident_memory_bytes"}
        want_roles = {"server"} if workers == 1 else {"supervisor", "worker"}
        assert {int(pid) for pid in per} == {p.pid for p in procs} and set(per.values()) == want_roles, per
        assert total(m, "heimdall_process_cpu_seconds_total") == pytest.approx(
            total(m, "process_cpu_seconds_total"), abs=0.05)


def test_build_info_names_version_hot_path_and_python(upstream):
    hp = free_tcp_port()
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_HTTP_BIND_ADDR": f"127.0.0.1:{hp}"}) as srv:
        srv.query("www.example.test")
        m = scrape(hp)
    (labels,) = [dict(ls) for (name, ls), v in m.items() if name == "heimdall_build_info" and v == 1]
    assert labels == {"version": __version__, "hot_path": "c" if hot_path_built() else "python",
                      "python": platform.python_version()}
