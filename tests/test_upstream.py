"""The local NSD upstream answers what its zones promise."""

import os
import shutil
import signal
import subprocess
import sys
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from procs import gone_or_zombie


def ask(up, name, rdtype="A", tcp=False):
    q = dns.message.make_query(name, rdtype)
    fn = dns.query.tcp if tcp else dns.query.udp
    return fn(q, up.address, port=up.port, timeout=2)


def test_wildcard_answers_any_bench_name(upstream):
    r = ask(upstream, "unique-123.bench.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer[0][0].address == "192.0.2.1"


def test_nxdomain_carries_soa(upstream):
    r = ask(upstream, "missing.example.test")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_big_txt_needs_tcp(upstream):
    udp = ask(upstream, "big.example.test", "TXT")
    assert udp.flags & dns.flags.TC
    tcp = ask(upstream, "big.example.test", "TXT", tcp=True)
    assert len(tcp.answer[0]) == 40


CHILD = """
import sys, time
from tools.nsd import LocalUpstream
up = LocalUpstream(tied=sys.argv[1] == "1").start()
print(up.pid, up.port, up.workdir, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("tied", [True, False])
def test_nsd_dies_with_a_sigkilled_parent_only_when_tied(tied):
    """A SIGKILLed test or `heimdall serve --demo` must not leave its NSD behind;
    `heimdall-tools upstream start` (tied=False) must."""
    parent = subprocess.Popen([sys.executable, "-c", CHILD, "1" if tied else "0"], stdout=subprocess.PIPE, text=True)
    pid_text, port_text, workdir = parent.stdout.readline().split()
    nsd_pid, port = int(pid_text), int(port_text)
    try:
        assert not gone_or_zombie(nsd_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not gone_or_zombie(nsd_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone_or_zombie(nsd_pid) is tied
        if not tied:  # still serving after its starter is gone
            q = dns.message.make_query("ns1.example.test", "A")
            assert dns.query.udp(q, "127.0.0.1", port=port, timeout=2).answer
    finally:
        if not gone_or_zombie(nsd_pid):
            os.kill(nsd_pid, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)  # its owner was SIGKILLed: nobody else removes it
