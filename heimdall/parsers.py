"""Settings' values from text: every parser turns an environment variable's text into a value.

Each raises ValueError with a short reason, which heimdall/config.py prefixes
with the variable's name (and heimdall/configfile.py with FILE:LINE).
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @property
    def family(self) -> int:
        import socket

        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- parsers: str -> value, raising ValueError with a short reason ---

def parse_hostport(text: str, default_port: int | None = None) -> HostPort:
    text = text.strip()
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host:port")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port (want host:port, e.g. 127.0.0.1:1053)")
        port_num = default_port
    else:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} has an invalid port")
        port_num = int(port)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{text!r}: host must be an IP address") from None
    return HostPort(host, port_num)


def parse_bind(text: str) -> HostPort:
    return parse_hostport(text)


def parse_optional_bind(text: str) -> HostPort | None:
    """host:port, or None for a listener that is off ("", disabled, off, none)."""
    if text.strip().lower() in ("", "disabled", "off", "none"):
        return None
    return parse_hostport(text)


parse_http_bind = parse_optional_bind


def parse_paths(text: str) -> tuple[str, ...]:
    return tuple(t for t in (p.strip() for p in text.split(",")) if t)


def parse_ip_list(text: str) -> str:
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            ipaddress.ip_address(part)
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address") from None
    return text.strip()


def parse_ca_file(text: str) -> str:
    """A PEM file of CA certificates to trust besides the system's; checked now, not at the first query."""
    import ssl

    path = text.strip()
    if path:
        try:
            ssl.create_default_context().load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{path!r} is not a readable PEM file of CA certificates ({exc})") from None
    return path


def imported(module: str, name: str) -> Callable[[str], Any]:
    """A parser from a module imported only when its setting is given (dnspython stays out otherwise)."""
    return lambda text: getattr(importlib.import_module(module), name)(text)


DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds from "30s", "5m", "4h", "1h30m", "250ms" or a plain number of seconds."""
    t = text.strip().lower()
    parts = DURATION.findall(t)
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    if not t or "".join(n + u for n, u in parts) != t:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 5m, 4h, 1h30m)")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def duration_in(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = parse_duration(text)
        if not lo <= value <= hi:
            raise ValueError(f"{text.strip()} is out of range {lo:g}s..{hi:g}s")
        return value
    return parse


SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
              "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def size_in(lo: int, hi: int) -> Callable[[str], int]:
    """Bytes from "67108864", "64MiB", "500kB" (k/M/G are powers of 1000, KiB/MiB/GiB of 1024)."""
    def parse(text: str) -> int:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip().lower())
        if m is None or m.group(2) not in SIZE_UNITS:
            raise ValueError(f"{text!r} is not a size (e.g. 67108864, 64MiB, 500kB)")
        value = int(float(m.group(1)) * SIZE_UNITS[m.group(2)])
        if not lo <= value <= hi:
            raise ValueError(f"{value} bytes is out of range {lo}..{hi}")
        return value
    return parse


def parse_list_entries(text: str) -> tuple[str, ...]:
    """Comma list of list files and http(s) URLs."""
    entries = parse_paths(text)
    for e in entries:
        scheme = e.partition("://")[0].lower() if "://" in e else ""
        if scheme and scheme not in ("http", "https"):
            raise ValueError(f"{e!r}: only http:// and https:// URLs can be fetched (or give a file path)")
    return entries


def parse_redis_url(text: str) -> str:
    text = text.strip()
    if text and not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{text!r} is not a redis://, rediss:// or unix:// URL")
    return text


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}..{hi}")
        return value
    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value:g} is out of range {lo:g}..{hi:g}")
        return value
    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return low
    return parse
