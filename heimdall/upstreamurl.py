"""An upstream as the settings write it: `host:port` (UDP), or a URL naming a stream transport.

`tcp://host:port` is DNS over TCP (RFC 7766), `tls://host:port#name` DNS over
TLS (RFC 7858), `https://host:port/path#name` DNS over HTTPS (RFC 8484) and
`quic://host:port#name` DNS over QUIC (RFC 9250).
The host is an IP address, as for plain upstreams, so no resolver is needed
to reach a resolver; `#name` is the name the certificate must carry (without
it, the certificate must carry the IP address). A parsed URL prints back in
the same form, which is how metrics and logs name the upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from heimdall.parsers import HostPort, parse_hostport

DEFAULT_PORTS = {"tcp": 53, "tls": 853, "https": 443, "quic": 853}
SCHEMES = ", ".join(f"{s}://" for s in DEFAULT_PORTS)


@dataclass(frozen=True)
class UpstreamUrl(HostPort):
    """An upstream reached over a stream: its transport, and for TLS the name to verify."""

    transport: str = "tcp"  # tcp | tls | https | quic
    server_name: str = ""   # the certificate's name to check ("" = the IP address)
    path: str = ""          # https only: the DoH endpoint, e.g. /dns-query

    @property
    def verify_name(self) -> str:
        return self.server_name or self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        name = f"#{self.server_name}" if self.server_name else ""
        return f"{self.transport}://{host}:{self.port}{self.path}{name}"


def transport(addr: HostPort) -> str:
    """udp for a plain host:port, else the URL's transport."""
    return addr.transport if isinstance(addr, UpstreamUrl) else "udp"


def parse_upstream(text: str) -> HostPort:
    """One upstream: `host[:port]` (UDP, port 53) or a tcp://, tls://, https:// or quic:// URL."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return parse_hostport(text, default_port=53)
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r}: unknown upstream scheme {scheme!r} (want host:port or {SCHEMES})")
    rest, _, name = rest.partition("#")
    name = name.strip().lower().rstrip(".")
    if name and (not name.isascii() or any(c.isspace() or c in "/:@[]" for c in name)):
        raise ValueError(f"{text!r}: {name!r} is not a server name")
    if name and scheme == "tcp":
        raise ValueError(f"{text!r}: a server name (#name) needs tls://, https:// or quic://")
    hostport, slash, path = rest.partition("/")
    path = slash + path
    if scheme == "https":
        path = path or "/dns-query"
    elif path:
        raise ValueError(f"{text!r}: only https:// upstreams take a path")
    if not hostport:
        raise ValueError(f"{text!r} has no host")
    try:
        addr = parse_hostport(hostport, default_port=DEFAULT_PORTS[scheme])
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    return UpstreamUrl(addr.host, addr.port, scheme, name, path)


def parse_upstream_list(text: str, sep: str = ",") -> tuple[HostPort, ...]:
    """Upstreams separated by `sep`, each as parse_upstream reads it."""
    return tuple(parse_upstream(t) for t in (p.strip() for p in text.split(sep)) if t)
