"""Every line the server logs goes through `logging`: levels, JSON lines, journald priorities."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from heimdall_server import ROOT, HeimdallProcess, serve_until_answered


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
    err = serve_until_answered(upstream.addr, {"HEIMDALL_LOG_LEVEL": "warning"})
    assert "listening on" not in err and "stopped:" not in err, err
    chatty = serve_until_answered(upstream.addr, {"HEIMDALL_LOG_LEVEL": "debug"})
    assert "INFO: listening on" in chatty and "INFO: stopped:" in chatty, chatty


def test_under_systemd_lines_start_with_the_journal_priority(upstream):
    err = serve_until_answered(upstream.addr, {"JOURNAL_STREAM": "8:12345"})
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("<6>heimdall[") for line in lines), err


def test_bad_log_settings_are_config_errors(upstream):
    for name, value in (("HEIMDALL_LOG_LEVEL", "loud"), ("HEIMDALL_LOG_FORMAT", "xml")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
        env[name] = value
        r = subprocess.run([sys.executable, "-m", "heimdall", "serve"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stderr.startswith(f"error: {name}") and repr(value) in r.stderr, r.stderr
