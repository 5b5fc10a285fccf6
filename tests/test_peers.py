"""Launchers for servers under test, and the `upstream` daemon command, against the real programs."""

from __future__ import annotations

import subprocess
import sys

import dns.message
import dns.query
import psutil
import pytest

from tools.errors import ToolError
from tools.peers import DnsmasqServer, HeimdallServer, UnboundServer

CLI = [sys.executable, "-c", "from tools.cli import main; main()"]


def ask(addr: str, name: str, qtype: str = "A") -> dns.message.Message:
    host, port = addr.split(":")
    return dns.query.udp(dns.message.make_query(name, qtype), host, port=int(port), timeout=2)


def check_forwarder(server, upstream) -> None:
    r = ask(server.addr, "anything.bench.test.")
    assert r.rcode() == 0 and r.answer[0][0].address == "192.0.2.1"
    assert ask(server.addr, "www.example.test.", "AAAA").answer[0][0].address == "2001:db8::10"
    assert ask(server.addr, "nope.example.test.").rcode() == 3  # NXDOMAIN passes through


@pytest.mark.parametrize("cls", [UnboundServer, DnsmasqServer])
def test_forwarder_answers_and_stops(upstream, cls):
    server = cls(upstream.addr)
    with server:
        pid = server.pid
        assert psutil.pid_exists(pid)
        check_forwarder(server, upstream)
        workdir = server.workdir
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not workdir.exists()


def test_heimdall_launcher(upstream):
    with HeimdallServer(upstream.addr, env={"HEIMDALL_CACHE_CAPACITY": "1000"}) as server:
        check_forwarder(server, upstream)


def test_failed_start_is_one_clear_error(upstream):
    with UnboundServer(upstream.addr) as first:
        clash = UnboundServer(upstream.addr, port=first.port)
        with pytest.raises(ToolError, match="cannot start on"):
            clash.start(timeout=3)
        assert clash.proc is None and clash.workdir is None


def test_server_that_exits_is_reported_with_its_output(upstream):
    bad = HeimdallServer(upstream.addr, env={"HEIMDALL_CACHE_CAPACITY": "-5"})
    with pytest.raises(ToolError, match=r"exited with status .*CACHE_CAPACITY"):
        bad.start(timeout=10)
    assert bad.proc is None and bad.workdir is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)


def test_upstream_command_start_status_stop(tmp_path):
    d = str(tmp_path / "up")
    p = run_cli("upstream", "start", "--dir", d)
    try:
        assert p.returncode == 0, p.stderr
        addr = p.stdout.strip()
        assert ask(addr, "x.bench.test.").answer[0][0].address == "192.0.2.1"
        s = run_cli("upstream", "status", "--dir", d)
        assert s.returncode == 0 and s.stdout.strip() == addr
        again = run_cli("upstream", "start", "--dir", d)
        assert again.stdout.strip() == addr and "already running" in again.stderr
    finally:
        stop = run_cli("upstream", "stop", "--dir", d)
    assert stop.returncode == 0 and "stopped" in stop.stderr
    gone = run_cli("upstream", "status", "--dir", d)
    assert gone.returncode == 3 and "not running" in gone.stderr and "Traceback" not in gone.stderr
