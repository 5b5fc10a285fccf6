"""Every line the server logs goes through `logging`: levels, JSON lines, journald priorities."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import dns.exception
import dns.message
import dns.query

from heimdall_server import ROOT, HeimdallProcess
from tools.nsd import free_port


def serve_until_answered(upstream, env: dict[str, str]) -> str:
    """Run `heimdall serve` until it answers one query, stop it with SIGTERM; its stderr."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_") and k != "JOURNAL_STREAM"}
    full.update({"HEIMDALL_HTTP_BIND_ADDR": "disabled"}, **env)
    proc = subprocess.Popen([sys.executable, "-m", "heimdall", "serve", "--bind-addr", f"127.0.0.1:{port}",
                             "--upstream-servers", upstream.addr], env=full, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        q = dns.message.make_query("www.example.test", "A")
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5)
                break
            except (dns.exception.Timeout, OSError):
                assert time.monotonic() < deadline, "heimdall did not answer"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return err


def test_json_lines_carry_level_logger_pid_and_message(upstream, tmp_path):
    bad_snapshot = tmp_path / "cache.bin"
    bad_snapshot.write_bytes(b"not a snapshot")
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_LOG_FORMAT": "json",
                                               "HEIMDALL_CACHE_FILE": str(bad_snapshot)}) as srv:
        srv.query("www.example.test")
        assert srv.stop() == 0
        lines = [json.loads(line) for line in srv.log.splitlines() if line.strip()]
    assert all(set(line) >= {"time", "level", "logger", "pid", "message"} for line in lines), lines
    by_level = {(line["level"], line["message"].split(":")[0].split(" ")[0]) for line in lines}
    assert ("warning", "cache") in by_level and ("info", "listening") in by_level, lines
    assert all(line["pid"] == srv.pid for line in lines), lines


def test_log_level_warning_keeps_info_lines_out(upstream):
    err = serve_until_answered(upstream, {"HEIMDALL_LOG_LEVEL": "warning"})
    assert "listening on" not in err and "stopped:" not in err, err
    chatty = serve_until_answered(upstream, {"HEIMDALL_LOG_LEVEL": "debug"})
    assert "INFO: listening on" in chatty and "INFO: stopped:" in chatty, chatty


def test_under_systemd_lines_start_with_the_journal_priority(upstream):
    err = serve_until_answered(upstream, {"JOURNAL_STREAM": "8:12345"})
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("<6>heimdall[") for line in lines), err


def test_bad_log_settings_are_config_errors(upstream):
    for name, value in (("HEIMDALL_LOG_LEVEL", "loud"), ("HEIMDALL_LOG_FORMAT", "xml")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
        env[name] = value
        r = subprocess.run([sys.executable, "-m", "heimdall", "serve"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stderr.startswith(f"error: {name}") and repr(value) in r.stderr, r.stderr
