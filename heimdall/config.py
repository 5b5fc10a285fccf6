"""Configuration: one dataclass; each field is a HEIMDALL_* variable and a flag.

A field is declared once with `setting(default, parser, help)`; the env var
name (HEIMDALL_ + upper-case field name), the flag (--field-name) and the
error messages are derived from it, so adding an option is one line here
(and its name in SECTIONS, the part of the server it configures). Flags win
over the environment. Invalid values raise ConfigError, which the
CLI prints as one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from heimdall.clientgroups import ClientGroup, parse_client_groups
from heimdall.logs import FORMATS, LEVELS
from heimdall.parsers import (  # noqa: F401 - re-exported: callers import them from here
    DURATION,
    DURATION_UNITS,
    SIZE_UNITS,
    HostPort,
    choice,
    duration_in,
    float_in,
    imported,
    int_in,
    parse_bind,
    parse_bool,
    parse_ca_file,
    parse_duration,
    parse_hostport,
    parse_http_bind,
    parse_ip_list,
    parse_list_entries,
    parse_optional_bind,
    parse_paths,
    parse_redis_url,
    size_in,
)
from heimdall.upstreamurl import parse_upstream_list, transport

if TYPE_CHECKING:
    from heimdall.forwardzones import ForwardZone

ENV_PREFIX = "HEIMDALL_"
CONFIG_ALIAS = "HEIMDALL_CONFIG"  # --config, the short name of --config-file


class ConfigError(ValueError):
    """A bad configuration value; str() is the one-line message to print."""


def setting(default: Any, parser: Callable[[str], Any], help: str, aliases: Sequence[str] = ()) -> Any:
    """Declare a config field: its default, its string parser, its help, extra env names."""
    meta = {"parser": parser, "help": help, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


DAY = 86400


@dataclass(frozen=True)
class Config:
    """Everything `heimdall serve` can be told. One line per option."""

    # listeners
    bind_addr: HostPort = setting(HostPort("127.0.0.1", 1053), parse_bind,
                                  "address for UDP and TCP, host:port")
    udp_batch: str = setting("auto", choice("auto", "on", "off"),
                             "recvmmsg/sendmmsg batches: auto (when datagrams queue up), on (always), off")
    hot_path: str = setting("auto", choice("auto", "c", "python"),
                            "UDP cache hits: c (built-in C reader), python, or auto (c when built and "
                            "the query log is off)")
    tcp_idle_timeout: float = setting(10.0, float_in(0.1, 3600), "seconds an idle TCP connection is kept")
    tcp_max_connections: int = setting(512, int_in(1, 100_000), "open TCP connections per worker; at the limit "
                                       "a new one closes the oldest idle one")
    tcp_max_connections_per_ip: int = setting(0, int_in(0, 100_000), "open TCP connections per client address "
                                              "and worker (0 = no limit of its own)")
    tls_bind_addr: HostPort | None = setting(None, parse_optional_bind, "DNS over TLS (RFC 7858) address "
                                             "host:port, e.g. 127.0.0.1:853, or disabled")
    https_bind_addr: HostPort | None = setting(None, parse_optional_bind, "DNS over HTTPS (RFC 8484, /dns-query, "
                                               "HTTP/2 and HTTP/1.1) address host:port, or disabled")
    quic_bind_addr: HostPort | None = setting(None, parse_optional_bind, "DNS over QUIC (RFC 9250) address "
                                              "host:port (UDP), e.g. 127.0.0.1:853, or disabled")
    tls_cert_file: str = setting("", str.strip, "PEM certificate chain of the DoT, DoH and DoQ listeners "
                                 "(re-read on SIGHUP)")
    tls_key_file: str = setting("", str.strip, "PEM private key of that certificate (re-read on SIGHUP)")
    # ratelimit
    enable_rate_limiting: bool = setting(False, parse_bool, "token-bucket rate limit per client address")
    queries_per_second_per_ip: float = setting(100.0, float_in(0.001, 1e9), "refill rate per client (its queries reach one worker)")
    burst_size_per_ip: float = setting(200.0, float_in(1, 1e9), "bucket size per client")
    global_queries_per_second: float = setting(0.0, float_in(0, 1e9),
                                               "limit over all clients, all workers together (0 = off)")
    rate_limit_action: str = setting("refused", choice("refused", "drop"), "limited queries: refused or drop")
    rate_limit_aggregate: bool = setting(False, parse_bool, "one bucket per IPv4 /24 and IPv6 /56")
    # local
    local_records: tuple[str, ...] = setting((), parse_paths, "comma list of hosts-format files answered "
                                             "authoritatively (IP name aliases...), with their PTRs")
    local_entries: tuple[str, ...] = setting((), imported("heimdall.localdata", "parse_entries"),
                                             "comma list of records 'name TYPE data' (A, AAAA, CNAME, TXT, "
                                             "PTR, MX, SRV) answered authoritatively")
    local_zones: tuple[str, ...] = setting((), imported("heimdall.forwardzones", "parse_zone_list"),
                                           "comma list of zones served only from the local records: other "
                                           "names in them are NXDOMAIN (with SOA)")
    local_ttl: int = setting(60, int_in(0, 7 * DAY), "TTL of local records and of their negative answers")
    # blocking
    blocklists: tuple[str, ...] = setting((), parse_list_entries, "comma list of blocklist files and http(s) URLs")
    allowlist: tuple[str, ...] = setting((), parse_list_entries,
                                         "comma list of allowlist files and http(s) URLs (win over blocks)")
    blocking_mode: str = setting("zero_ip", choice("zero_ip", "nxdomain", "refused", "custom_ip"),
                                 "answer for blocked names: zero_ip, nxdomain, refused, custom_ip")
    blocking_custom_ip: str = setting("", parse_ip_list, "custom_ip mode: an IPv4 and/or IPv6 address")
    blocking_ttl: int = setting(300, int_in(0, 7 * DAY), "TTL of blocked answers")
    blocklist_reload_interval: float = setting(0.0, float_in(0, DAY),
                                               "seconds between list mtime checks (0 = only on SIGHUP)")
    client_groups: tuple[ClientGroup, ...] = setting((), parse_client_groups,
                                                     "JSON object of client groups, each with clients (IP/CIDR), "
                                                     "blocklists, allowlist, blocking_mode (docs/blocking.md)")
    cname_cloaking: bool = setting(True, parse_bool, "block an allowed name whose answer's CNAME chain passes "
                                   "through a blocked name")
    blocklist_refresh: float = setting(4 * 3600.0, duration_in(1, 30 * DAY),
                                       "how often list URLs are fetched again (30s, 5m, 4h), conditionally")
    blocklist_max_bytes: int = setting(64 << 20, size_in(1, 1 << 40),
                                       "largest list download accepted (bytes, or 64MiB, 500kB)")
    blocklist_fetch_timeout: float = setting(120.0, duration_in(0.1, 3600),
                                             "seconds a list download may take, and may wait for the network")
    any_mode: str = setting("minimal", choice("minimal", "refused", "forward"),
                            "qtype ANY: minimal (RFC 8482 HINFO), refused, or forward")
    # cache
    cache_capacity: int = setting(100_000, int_in(0, 50_000_000), "cached answers per worker",
                                  aliases=("HEIMDALL_MAX_CACHE_SIZE",))
    min_ttl: int = setting(0, int_in(0, 7 * DAY), "lowest TTL an answer is cached and served with")
    max_ttl: int = setting(DAY, int_in(0, 7 * DAY), "highest TTL an answer is cached and served with")
    negative_ttl: int = setting(3600, int_in(0, 7 * DAY), "cap on NXDOMAIN/NODATA caching (SOA minimum otherwise)")
    serve_stale: int = setting(0, int_in(0, 7 * DAY),
                               "seconds past expiry an answer may be served when upstreams fail (0 = off)")
    prefetch: bool = setting(False, parse_bool, "refetch an answer asked for in the last tenth of its TTL, "
                             "before it expires (TTLs of 10 s and more)")
    cache_file: str = setting("", str.strip,
                              "cache snapshot file, restored at start (empty = off; N workers: FILE.<index>)")
    cache_snapshot_interval: float = setting(300.0, float_in(1, 86400), "seconds between cache snapshots")
    # shared
    redis_url: str = setting("", parse_redis_url,
                             "shared second cache tier, e.g. redis://127.0.0.1:6379/0 (empty = off)")
    redis_key_prefix: str = setting("heimdall:", str, "prefix of every Redis key (one namespace per fleet)")
    redis_timeout: float = setting(0.05, float_in(0.001, 10),
                                   "seconds per Redis command before Redis counts as down")
    # upstream
    upstream_servers: tuple[HostPort, ...] = setting((), parse_upstream_list,
                                                     "comma list of upstreams: host:port (UDP, port 53 if omitted), "
                                                     "tcp://host:port, tls://host:port#name, "
                                                     "https://host:port/dns-query#name, quic://host:port#name")
    upstream_ca_file: str = setting("", parse_ca_file, "PEM file of CA certificates trusted for tls://, https:// and quic:// "
                                    "upstreams besides the system's")
    upstream_timeout: float = setting(2.0, float_in(0.05, 60), "seconds before SERVFAIL when no upstream answers")
    max_inflight: int = setting(10_000, int_in(1, 1_000_000),
                                "client queries waiting on upstreams, all workers together")
    max_inflight_per_zone: int = setting(100, int_in(0, 1_000_000), "upstream fetches per worker for names with "
                                         "the same parent (a random-subdomain flood's zone); 0 = no bound")
    max_inflight_per_client: int = setting(0, int_in(0, 1_000_000), "of those, per worker, from one client "
                                           "address; 0 = no bound")
    use_0x20: bool = setting(False, parse_bool, "randomise upstream query name case, require it echoed exactly")
    demo: bool = setting(False, parse_bool, "start a demo NSD upstream on loopback and forward to it")
    # forward
    forward_zones: tuple["ForwardZone", ...] = setting((), imported("heimdall.forwardzones", "parse_forward_zones"),
                                                       "comma list of zone=host:port|host:port: names under a "
                                                       "zone go only to its upstreams")
    # observers
    http_bind_addr: HostPort | None = setting(HostPort("127.0.0.1", 8053), parse_http_bind,
                                              "HTTP /metrics /health /stats address host:port, or disabled")
    api_token: str = setting("", str.strip, "bearer token every /api call must carry; required when the HTTP "
                             "address is not loopback")
    query_log: str = setting("", str.strip, "JSON-lines query log file (empty = off)")
    log_level: str = setting("info", choice(*LEVELS), "least severe level logged: debug, info, warning or error")
    log_format: str = setting("text", choice(*FORMATS), "log lines on stderr: text or json (one object per line)")
    # process
    config_file: str = setting("", str.strip, "TOML file with every other setting (heimdall.example.toml); flags and "
                               "environment win over it; SIGHUP re-reads it", aliases=(CONFIG_ALIAS,))
    worker_threads: int = setting(1, int_in(1, 64), "worker processes (1 = serve in this process)")
    state_dir: str = setting("", str.strip, "directory for downloaded lists (empty: $STATE_DIRECTORY, else "
                             "/var/lib/heimdall when writable, else ~/.local/state/heimdall)")
    shutdown_grace: float = setting(5.0, float_in(0, 300), "seconds to finish in-flight queries on SIGTERM")

    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    def validate(self) -> "Config":
        if self.min_ttl > self.max_ttl:
            raise ConfigError(f"HEIMDALL_MIN_TTL ({self.min_ttl}) is larger than HEIMDALL_MAX_TTL ({self.max_ttl})")
        if self.blocking_mode == "custom_ip" and not self.blocking_custom_ip:
            raise ConfigError("HEIMDALL_BLOCKING_MODE=custom_ip needs HEIMDALL_BLOCKING_CUSTOM_IP")
        for addr, env in ((self.tls_bind_addr, "HEIMDALL_TLS_BIND_ADDR"), (self.https_bind_addr, "HEIMDALL_HTTPS_BIND_ADDR"),
                          (self.quic_bind_addr, "HEIMDALL_QUIC_BIND_ADDR")):
            if addr is not None and not (self.tls_cert_file and self.tls_key_file):
                raise ConfigError(f"{env} {addr} needs HEIMDALL_TLS_CERT_FILE and HEIMDALL_TLS_KEY_FILE "
                                  "(the server's certificate and its private key)")
        http = self.http_bind_addr
        if http is not None and not self.api_token and not ipaddress.ip_address(http.host).is_loopback:
            raise ConfigError(f"HEIMDALL_HTTP_BIND_ADDR {http} is reachable beyond this machine: set HEIMDALL_API_TOKEN "
                              "so that /api calls (pause blocking, flush the cache) need it")
        upstreams = [*self.upstream_servers, *(u for zone in self.forward_zones for u in zone.upstreams)]
        quic = self.quic_bind_addr is not None or any(transport(u) == "quic" for u in upstreams)
        if quic and importlib.util.find_spec("aioquic") is None:
            raise ConfigError("DNS over QUIC (HEIMDALL_QUIC_BIND_ADDR or a quic:// upstream) needs the aioquic "
                              "package, which the server's install leaves out: pip install 'heimdall-dns[quic]'")
        if self.redis_url and importlib.util.find_spec("redis") is None:
            raise ConfigError("HEIMDALL_REDIS_URL needs the redis package, which the server's install leaves out: "
                              "pip install 'heimdall-dns[redis]'")
        return self


# Each setting belongs to one section, named after the part of the server it configures
# (the stages of heimdall/pipeline.py, then the process); `heimdall serve --help` groups by them.
SECTIONS: dict[str, tuple[str, ...]] = {
    "listeners": ("bind_addr", "udp_batch", "hot_path", "tcp_idle_timeout", "tcp_max_connections",
                  "tcp_max_connections_per_ip", "tls_bind_addr", "https_bind_addr", "quic_bind_addr", "tls_cert_file",
                  "tls_key_file"),
    "ratelimit": ("enable_rate_limiting", "queries_per_second_per_ip", "burst_size_per_ip",
                  "global_queries_per_second", "rate_limit_action", "rate_limit_aggregate"),
    "local": ("local_records", "local_entries", "local_zones", "local_ttl"),
    "blocking": ("blocklists", "allowlist", "blocking_mode", "blocking_custom_ip", "blocking_ttl",
               "blocklist_reload_interval", "blocklist_refresh", "blocklist_max_bytes", "blocklist_fetch_timeout",
               "client_groups", "cname_cloaking", "any_mode"),
    "cache": ("cache_capacity", "min_ttl", "max_ttl", "negative_ttl", "serve_stale", "prefetch", "cache_file",
              "cache_snapshot_interval"),
    "shared": ("redis_url", "redis_key_prefix", "redis_timeout"),
    "upstream": ("upstream_servers", "upstream_ca_file", "upstream_timeout", "max_inflight", "max_inflight_per_zone",
                 "max_inflight_per_client", "use_0x20", "demo"),
    "forward": ("forward_zones",),
    "observers": ("http_bind_addr", "api_token", "query_log", "log_level", "log_format"),
    "process": ("config_file", "worker_threads", "state_dir", "shutdown_grace"),
}


def section_of(name: str) -> str:
    return next(sec for sec, names in SECTIONS.items() if name in names)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(prog: str = "heimdall serve") -> argparse.ArgumentParser:
    """An argparse parser with one string option per Config field (values parsed later)."""
    parser = OneLineParser(prog=prog, description="Serve DNS: caching, forwarding, on uvloop.",
                           epilog="Every flag is also an environment variable: --bind-addr = HEIMDALL_BIND_ADDR.")
    groups = {sec: parser.add_argument_group(sec) for sec in SECTIONS}
    for f in fields(Config):
        # every Config field has a default or a default_factory; mypy cannot tie the MISSING check to the factory
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "metavar": "VALUE",
                                  "help": f"{f.metadata['help']} [{Config.env_name(f.name)}, default: {shown}]"}
        if f.metadata["parser"] is parse_bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        names = [flag_name(f.name)] + [flag_name(a[len(ENV_PREFIX):].lower()) for a in f.metadata["aliases"]]
        groups[section_of(f.name)].add_argument(*names, **kwargs)
    return parser


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


# The flags and environment the running configuration was loaded from: a reload (SIGHUP) re-reads
# the file under them, so that they keep winning over it.
_loaded_from: tuple[list[str], dict[str, str]] = ([], {})


def reload_config() -> Config:
    """The configuration as the file says now, under the same flags and environment; ConfigError if bad."""
    return load_config(*_loaded_from)


def load_config(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Config:
    """Config from the file, environment and flags (flags win, then environment); ConfigError on any bad value."""
    global _loaded_from
    from heimdall import configfile

    environ = dict(os.environ if environ is None else environ)
    _loaded_from = (list(argv), environ)
    flags = vars(build_parser().parse_args(list(argv)))
    path = flags["config_file"] or environ.get(Config.env_name("config_file")) or environ.get(CONFIG_ALIAS)
    try:
        in_file = configfile.read(path) if path else {}
    except configfile.ConfigFileError as exc:
        raise ConfigError(str(exc)) from None
    values: dict[str, Any] = {}
    for f in fields(Config):
        env = Config.env_name(f.name)
        raw, source = flags.get(f.name), flag_name(f.name)
        if raw is None:
            for name in (env, *f.metadata["aliases"]):
                if name in environ:
                    raw, source = environ[name], name
                    break
        if raw is None:
            raw, source = in_file.get(f.name), f"{path} [{section_of(f.name)}] {f.name}"
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parser"](raw)
        except ValueError as exc:
            where = env if source == env else f"{env} ({source})"
            raise ConfigError(f"{where}: {exc}") from None
    return replace(Config(), **values).validate()
