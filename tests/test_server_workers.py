"""Process model: N SO_REUSEPORT workers under a supervisor, restarts, signals, clean exits."""

from __future__ import annotations

import signal
import socket
import threading
import time

import dns.message
import dns.query
import psutil
import pytest

from heimdall_server import HeimdallProcess
from procs import children, wait_for
from test_server_upstream import FakeUpstream, unique


def test_two_workers_answer_and_a_killed_worker_is_replaced(upstream):
    with HeimdallProcess([upstream.addr], args=["--worker-threads", "2"]) as h:
        assert "(2 workers" in h.log
        workers = children(h.pid)
        assert len(workers) == 2
        # Many source ports so SO_REUSEPORT spreads queries over both workers.
        for _ in range(20):
            assert h.query(unique()).answer[0][0].address == "192.0.2.1"
        victim = sorted(workers)[0]
        psutil.Process(victim).send_signal(signal.SIGKILL)
        assert wait_for(lambda: len(children(h.pid)) == 2 and victim not in children(h.pid))
        time.sleep(0.3)
        for _ in range(20):
            assert h.query(unique()).answer[0][0].address == "192.0.2.1"
        assert h.query("www.example.test", tcp=True).answer[0][0].address == "192.0.2.10"
        assert "restarting" in h.log
        assert h.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_means_clean_exit_zero(upstream, workers, sig):
    h = HeimdallProcess([upstream.addr], args=["--worker-threads", workers]).start()
    try:
        kids = children(h.pid)
        assert h.query("www.example.test").answer
        h.signal(sig)
        assert h.proc.wait(10) == 0
        assert wait_for(lambda: not any(psutil.pid_exists(k) for k in kids), 5)
        assert "Traceback" not in h.log
    finally:
        h.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_queries_in_flight(workers):
    with FakeUpstream("delay", delay=0.8) as slow:
        h = HeimdallProcess([slow.addr], args=["--worker-threads", workers, "--upstream-timeout", "3"]).start()
        try:
            got: list = []
            t = threading.Thread(target=lambda: got.append(h.query(unique(), timeout=5)))
            t.start()
            assert wait_for(lambda: len(slow.queries) == 1, 3)
            h.signal(signal.SIGTERM)
            t.join(6)
            assert got and got[0].answer[0][0].address == "192.0.2.99"
            assert h.proc.wait(10) == 0
            # And it no longer accepts anything.
            with pytest.raises(Exception):
                dns.query.udp(dns.message.make_query("www.example.test", "A"), h.address, port=h.port, timeout=0.5)
        finally:
            h.stop()


def test_sighup_does_not_stop_the_server(upstream):
    with HeimdallProcess([upstream.addr], args=["--worker-threads", "2"]) as h:
        kids = children(h.pid)
        h.signal(signal.SIGHUP)
        time.sleep(0.5)
        assert h.proc.poll() is None and children(h.pid) == kids
        assert h.query("www.example.test").answer


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_one_line_error(upstream, workers):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        h = HeimdallProcess([upstream.addr], port=port, args=["--worker-threads", workers])
        with pytest.raises(RuntimeError):
            h.start(timeout=10)
        try:
            assert h.proc.returncode == 3
            assert "address already in use" in h.log
            assert "Traceback" not in h.log
        finally:
            h.stop()
