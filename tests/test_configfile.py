"""The TOML configuration file: errors as FILE:LINE, precedence, the example, SIGHUP re-reading it under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.rcode
import pytest

from closed_loop import ClosedLoop
from heimdall.config import ConfigError, load_config
from heimdall_server import ROOT, HeimdallProcess

BAD = """\
# a file with one problem of each kind
cache_capacity = 5

[cache]
cache_capacty = 1000
min_ttl = "soon"

[upstream]
upstream_servers = ["9.9.9.9", "1.1.1.1:99999"]
blocklists = ["a.txt"]

[bogus]
x = 1
"""


def heimdall(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    return subprocess.run([sys.executable, "-m", "heimdall", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_check_reports_every_error_with_its_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    r = heimdall("config", "check", str(path))
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert [int(line.split(":")[1]) for line in lines] == [2, 5, 6, 9, 10, 12], r.stderr
    assert "put it under [cache]" in lines[0]
    assert "did you mean 'cache_capacity'" in lines[1]
    assert "min_ttl" in lines[2] and "1.1.1.1:99999" in lines[3]
    assert "belongs in [blocking]" in lines[4] and "unknown section [bogus]" in lines[5]


@pytest.mark.parametrize("text, words", [
    ("[cache\n", ":1: TOML"),
    ("[cache]\nmin_ttl = 500\nmax_ttl = 100\n", "MIN_TTL"),
    ("[process]\nconfig_file = 'x.toml'\n", ":2: the file cannot name itself"),
    ("[listeners]\nbind_addr = { host = '127.0.0.1' }\n", ":2: [listeners] bind_addr: "),
])
def test_check_rejects_syntax_cross_field_and_nested_values(tmp_path, text, words):
    path = tmp_path / "c.toml"
    path.write_text(text)
    r = heimdall("config", "check", str(path))
    assert r.returncode == 2 and words in r.stderr, r


def test_the_example_is_complete_current_and_valid():
    r = heimdall("config", "example")
    assert r.returncode == 0
    assert (ROOT / "heimdall.example.toml").read_text() == r.stdout, "regenerate: heimdall config example"
    check = heimdall("config", "check", str(ROOT / "heimdall.example.toml"))
    assert check.returncode == 0 and "ok" in check.stdout, check


def test_flags_win_over_environment_which_wins_over_the_file(tmp_path):
    path = tmp_path / "h.toml"
    path.write_text('[cache]\nmin_ttl = 100\nmax_ttl = 900\n[upstream]\nupstream_servers = ["192.0.2.1", "192.0.2.2:5353"]\n')
    assert load_config(["--config", str(path)], {}).min_ttl == 100
    assert load_config([], {"HEIMDALL_CONFIG": str(path)}).max_ttl == 900
    env = {"HEIMDALL_CONFIG": str(path), "HEIMDALL_MIN_TTL": "200"}
    assert load_config([], env).min_ttl == 200
    assert load_config(["--min-ttl", "300"], env).min_ttl == 300
    assert [str(u) for u in load_config([], env).upstream_servers] == ["192.0.2.1:53", "192.0.2.2:5353"]
    with pytest.raises(ConfigError, match="No such file"):
        load_config(["--config", str(tmp_path / "missing.toml")], {})


def write_config(path: Path, upstream: str, blocklist: Path, level: str = "info", capacity: int = 1000) -> None:
    path.write_text(f'[upstream]\nupstream_servers = ["{upstream}"]\n'
                    f'[blocking]\nblocklists = ["{blocklist}"]\nblocking_mode = "nxdomain"\n'
                    f'[cache]\ncache_capacity = {capacity}\n[observers]\nlog_level = "{level}"\n')


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_applies_lists_and_log_level_live_and_names_what_needs_a_restart(upstream, tmp_path, workers):
    a, b, conf = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "heimdall.toml"
    a.write_text("www.example.test\n")
    b.write_text("bench.test\n")
    write_config(conf, upstream.addr, a)
    with HeimdallProcess([], args=["--config", str(conf)], env={"HEIMDALL_WORKER_THREADS": workers}) as srv:
        assert srv.query("www.example.test").rcode() == dns.rcode.NXDOMAIN
        names = ["ns1.example.test", "www.example.test", "w1.bench.test"]
        with ClosedLoop(srv.address, srv.port, lambda c, s: (names[s % 3], "any"), clients=4, gap=0.005) as load:
            time.sleep(0.5)
            write_config(conf, upstream.addr, b, level="warning", capacity=2000)
            srv.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while srv.query("w1.bench.test").rcode() != dns.rcode.NXDOMAIN:
                assert time.monotonic() < deadline, srv.log
                time.sleep(0.1)
            time.sleep(0.5)
        recs = load.stop()
        assert recs and not [r for r in recs if r.lost], f"{sum(r.lost for r in recs)} of {len(recs)} lost"
        assert srv.query("www.example.test").rcode() == dns.rcode.NOERROR  # list a is gone
        assert srv.stop() == 0
        log = srv.log
    reread = [line for line in log.splitlines() if "re-read" in line]
    assert len(reread) == 1, log
    assert "blocklists" in reread[0] and "log_level" in reread[0] and "needs a restart: cache_capacity" in reread[0]
    after = log.split(reread[0], 1)[1]
    assert "INFO" not in after, after  # log_level = "warning" took effect: not even "stopped:"


def test_a_broken_file_on_sighup_keeps_the_running_configuration(upstream, tmp_path):
    a, conf = tmp_path / "a.txt", tmp_path / "heimdall.toml"
    a.write_text("www.example.test\n")
    write_config(conf, upstream.addr, a)
    with HeimdallProcess([], args=["--config", str(conf)]) as srv:
        conf.write_text("[cache\n")
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "not applied" not in srv.log:
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.1)
        assert srv.query("www.example.test").rcode() == dns.rcode.NXDOMAIN
        assert srv.stop() == 0
