"""The pipeline's optional stages, installed by a setup the way heimdall/assembly.py does it.

Stage 1 (admit: rate limit), stage 3 (a policy: blocking) and a reload hook,
in a real worker run in a subprocess via `run_worker(..., setup=...)`;
clients are real sockets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from heimdall_server import ROOT
from tools.nsd import free_port

WORKER = textwrap.dedent('''
    import sys
    from heimdall import wire
    from heimdall.config import load_config
    from heimdall.outcome import Answer, How
    from heimdall.server import bind_sockets, run_worker

    config = load_config(sys.argv[1:], {})

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    blocked = {b"\\x07blocked\\x07example\\x04test\\x00"}
    generation = [0]

    def setup(server):
        def admit(ip):
            return ip != bytes([127, 0, 0, 2])

        class Policy:
            def check(self, data, q):
                if data[12:q.qend - 4].lower() in blocked:
                    return Answer(wire.error_reply(data, wire.NXDOMAIN, q.qend, q.edns), How.BLOCKED)
                return None

        def reload():
            blocked.add(b"\\x03www\\x07example\\x04test\\x00")
            server.cache.clear()
            generation[0] += 1
            log(f"reloaded {generation[0]}")

        server.pipeline.admit = admit
        server.pipeline.blocking = Policy()
        server.reload_hooks.append(reload)

    udp, tcp = bind_sockets(config.bind_addr, reuseport=False)
    run_worker(config, udp, tcp, on_ready=lambda s: log("listening on"), setup=setup)
''')


@pytest.fixture()
def hooked(upstream, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([sys.executable, str(script), "--bind-addr", f"127.0.0.1:{port}",
                             "--upstream-servers", upstream.addr], cwd=ROOT, stderr=open(log, "wb"),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while "listening on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ask(port: int, name: str, source: str = "127.0.0.1", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=2, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=1, source=source)


def test_admit_hook_drops_a_client_address(hooked):
    port, _, _ = hooked
    assert ask(port, "www.example.test").answer
    with pytest.raises(dns.exception.Timeout):
        ask(port, "www.example.test", source="127.0.0.2")


def test_policy_hook_blocks_before_the_cache_and_reload_takes_effect(hooked):
    port, proc, log = hooked
    assert ask(port, "blocked.example.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, "BLOCKED.example.test", tcp=True).rcode() == dns.rcode.NXDOMAIN
    for _ in range(3):  # cached now: served by the fast path
        assert ask(port, "www.example.test").answer[0][0].address == "192.0.2.10"
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reloaded 1" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    r = ask(port, "www.example.test")
    assert r.rcode() == dns.rcode.NXDOMAIN  # the reload hook cleared the cache: blocked at once
    assert ask(port, "other.bench.test").answer[0][0].address == "192.0.2.1"
