"""SIGHUP with a config file: which changed settings a running worker takes, and which wait for a restart.

Taken live, between two queries (none is lost):

* `log_level`, `log_format`;
* `blocklists`, `allowlist` when blocking was on at start (the lists reload in a thread);
* the `[local]` settings when local records were on at start;
* `upstream_servers`, `forward_zones`: stage 6 is rebuilt; a pool whose upstreams stayed keeps
  its sockets and health, cached answers under a changed zone are dropped (DnsServer.set_forwarding);
* `client_groups`: the groups' lists load in a thread, then the group table and stages swap and
  the cache is purged as after any list change (Assembly.set_groups);
* the `[ratelimit]` settings: a new limiter (every client starts with a full bucket) and a UDP
  reader built around it (Assembly.set_rate_limit).

Every other change is named in the re-read log line as needing a restart.
"""

from __future__ import annotations

from dataclasses import fields, replace

from heimdall.config import SECTIONS, Config

LISTS = ("blocklists", "allowlist")
LOCAL = SECTIONS["local"]
RATE_LIMIT = SECTIONS["ratelimit"]
FORWARDING = ("upstream_servers", "forward_zones")
LIVE = ("log_level", "log_format", *LISTS, *LOCAL, *FORWARDING, "client_groups", *RATE_LIMIT)


def changed(old: Config, new: Config) -> list[str]:
    return [f.name for f in fields(Config) if getattr(new, f.name) != getattr(old, f.name)]


def as_running(old: Config, new: Config) -> Config:
    """`new` as this server can run it: no upstreams means the demo upstream, which keeps serving."""
    if not new.upstream_servers:
        new = replace(new, upstream_servers=old.upstream_servers, demo=old.demo)
    return new


def split(names: list[str], lists_on: bool, local_on: bool) -> tuple[list[str], list[str]]:
    """(taken live, needs a restart): lists and local records change live only where their stage runs."""
    live = [n for n in names if n in LIVE and (lists_on or n not in LISTS) and (local_on or n not in LOCAL)]
    return live, [n for n in names if n not in live]
