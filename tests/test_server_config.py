"""Configuration: HEIMDALL_* variables and flags, flags win, bad values are one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields

import psutil
import pytest

from heimdall.config import Config, ConfigError, HostPort, flag_name, load_config
from heimdall_server import ROOT, HeimdallProcess


def test_defaults():
    c = load_config([], {})
    assert c.bind_addr == HostPort("127.0.0.1", 1053)
    assert c.upstream_servers == () and c.worker_threads == 1 and c.serve_stale == 0


def test_env_then_flags_win():
    env = {"HEIMDALL_UPSTREAM_SERVERS": "127.0.0.1:5300, [::1]:5301,10.0.0.1",
           "HEIMDALL_UPSTREAM_TIMEOUT": "1.5", "HEIMDALL_CACHE_CAPACITY": "10", "HEIMDALL_DEMO": "yes"}
    c = load_config([], env)
    assert c.upstream_servers == (HostPort("127.0.0.1", 5300), HostPort("::1", 5301), HostPort("10.0.0.1", 53))
    assert c.upstream_timeout == 1.5 and c.cache_capacity == 10 and c.demo is True
    c2 = load_config(["--cache-capacity", "20", "--upstream-timeout=3", "--demo", "false"], env)
    assert c2.cache_capacity == 20 and c2.upstream_timeout == 3.0 and c2.demo is False


def test_max_cache_size_is_an_alias():
    assert load_config([], {"HEIMDALL_MAX_CACHE_SIZE": "7"}).cache_capacity == 7
    assert load_config([], {"HEIMDALL_MAX_CACHE_SIZE": "7", "HEIMDALL_CACHE_CAPACITY": "8"}).cache_capacity == 8
    assert load_config(["--max-cache-size", "9"], {}).cache_capacity == 9


def test_every_field_has_env_and_flag():
    for f in fields(Config):
        assert f.metadata["parser"] and f.metadata["help"]
        assert flag_name(f.name).startswith("--")


@pytest.mark.parametrize("env,needle", [
    ({"HEIMDALL_UPSTREAM_TIMEOUT": "soon"}, "HEIMDALL_UPSTREAM_TIMEOUT"),
    ({"HEIMDALL_UPSTREAM_TIMEOUT": "-1"}, "HEIMDALL_UPSTREAM_TIMEOUT"),
    ({"HEIMDALL_BIND_ADDR": "127.0.0.1"}, "HEIMDALL_BIND_ADDR"),
    ({"HEIMDALL_BIND_ADDR": "example.com:53"}, "HEIMDALL_BIND_ADDR"),
    ({"HEIMDALL_UPSTREAM_SERVERS": "1.2.3.4:99999"}, "HEIMDALL_UPSTREAM_SERVERS"),
    ({"HEIMDALL_CACHE_CAPACITY": "lots"}, "HEIMDALL_CACHE_CAPACITY"),
    ({"HEIMDALL_MAX_CACHE_SIZE": "-3"}, "HEIMDALL_CACHE_CAPACITY"),
    ({"HEIMDALL_WORKER_THREADS": "0"}, "HEIMDALL_WORKER_THREADS"),
    ({"HEIMDALL_MIN_TTL": "100", "HEIMDALL_MAX_TTL": "10"}, "HEIMDALL_MIN_TTL"),
    ({"HEIMDALL_DEMO": "maybe"}, "HEIMDALL_DEMO"),
])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config([], env)


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "heimdall", *args], capture_output=True, text=True,
                          env=clean, cwd=ROOT, timeout=30)


@pytest.mark.parametrize("args,env,needle", [
    (["serve", "--upstream-timeout", "abc"], {}, "error: HEIMDALL_UPSTREAM_TIMEOUT (--upstream-timeout)"),
    (["serve"], {"HEIMDALL_CACHE_CAPACITY": "-5"}, "error: HEIMDALL_CACHE_CAPACITY"),
    (["serve"], {"HEIMDALL_WORKER_THREADS": "many"}, "error: HEIMDALL_WORKER_THREADS"),
    (["serve", "--bind-addr", "300.1.1.1:53"], {}, "error: HEIMDALL_BIND_ADDR"),
    (["serve", "--no-such-flag"], {}, "error: unrecognized arguments"),
    (["frobnicate"], {}, "error: unknown command"),
])
def test_cli_bad_config_is_one_line_and_exit_2(args, env, needle):
    r = run_cli(args, env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(needle)


def test_help_lists_env_vars():
    r = run_cli(["serve", "--help"])
    assert r.returncode == 0
    assert "HEIMDALL_UPSTREAM_SERVERS" in r.stdout and "--cache-capacity" in r.stdout


def test_demo_mode_starts_and_stops_its_own_upstream():
    with HeimdallProcess([], args=["--demo"]) as h:
        assert "demo upstream: NSD" in h.log
        assert h.query("www.example.test").answer[0][0].address == "192.0.2.10"
        nsd = [p for p in psutil.Process(h.pid).children(recursive=True) if "nsd" in p.name()]
        assert nsd
        assert h.stop() == 0
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in nsd)


def test_env_configures_the_running_server(upstream):
    with HeimdallProcess([], env={"HEIMDALL_UPSTREAM_SERVERS": upstream.addr, "HEIMDALL_MIN_TTL": "500"}) as h:
        assert f"upstreams {upstream.addr}" in h.log
        assert h.query("www.example.test").answer[0].ttl == 500


def test_every_setting_belongs_to_exactly_one_section():
    from dataclasses import fields

    from heimdall.config import SECTIONS, Config

    names = [n for section in SECTIONS.values() for n in section]
    assert sorted(names) == sorted(f.name for f in fields(Config))
