"""The TOML configuration file: `heimdall serve --config FILE` and `heimdall config check FILE`.

Every setting has a key: its environment variable without `HEIMDALL_`, in
lower case, under the section `heimdall serve --help` lists it in
(`HEIMDALL_CACHE_CAPACITY` is `cache_capacity` in `[cache]`). Values are
TOML's own types (numbers, booleans, strings, arrays for lists); each is
turned into the text its environment variable would hold and parsed by the
same parser, so the file cannot mean something the variable would not.
Flags win over environment variables, which win over the file.

[forward] also takes zones as keys: `lan = "192.168.1.1:53"`,
`"corp.example" = ["10.0.0.53:53", "10.0.0.54:53"]` (a dotted key unquoted
reads the same); they join `forward_zones`, whose value may also be such a
table.

tomllib gives no positions, so the line of each key is found by a scan of
the text that follows TOML's table and key syntax for what this file uses
(`[section]` headers, `key = value` lines).
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any

from heimdall.config import SECTIONS, Config

HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)((?:\.[A-Za-z0-9_-]+)*)\s*\]\s*(#.*)?$")
PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
KEY = re.compile(rf"^\s*({PART}(?:\s*\.\s*{PART})*)\s*=")  # bare, quoted and dotted keys
HEADER_KEY = "\0"  # no key is written so: "" is a key (a zone named "" in [forward])
SYNTAX_LINE = re.compile(r"\(at line (\d+), column \d+\)")
PARSERS = {f.name: f.metadata["parser"] for f in fields(Config)}


@dataclass(frozen=True)
class Problem:
    path: str
    line: int  # 0: the file as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class ConfigFileError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def key_lines(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number; section "" for keys before the first header; key HEADER_KEY for a header."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        if m := HEADER.match(line):
            section = m.group(1)
            lines.setdefault((section, HEADER_KEY), number)
            if m.group(2):  # [blocking.client_groups.kids]: a table-valued setting starts here
                lines.setdefault((section, m.group(2).split(".")[1]), number)
        elif m := KEY.match(line):
            lines.setdefault((section, key_text(m.group(1))), number)
    return lines


def key_text(key: str) -> str:
    """A key as written (`"corp.example"`, `corp . example`, `lan`) as the dotted name tomllib gives it."""
    return ".".join(part.strip().strip("\"'") for part in re.findall(PART, key))


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted names: a dotted key (`corp.example = ...`) reads as nested tables."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def zone_text(zone: str, value: Any) -> str:
    """`zone = "addr"` or `zone = ["addr", "addr"]` as HEIMDALL_FORWARD_ZONES writes it; ValueError if bad."""
    from heimdall.forwardzones import parse_zone_upstreams, zone_name

    addrs = value if isinstance(value, list) else [value]
    if not addrs or not all(isinstance(a, str) for a in addrs):
        raise ValueError(f"zone {zone!r}: want an upstream \"host:port\" or an array of them")
    text = "|".join(addrs)
    try:
        return f"{zone_name(zone)}={'|'.join(map(str, parse_zone_upstreams(text)))}"
    except ValueError as exc:
        raise ValueError(f"zone {zone!r}: {exc}") from None


TABLES = ("forward_zones", "client_groups")  # the settings a TOML table may give


def as_setting_text(value: Any, key: str = "") -> str:
    """A TOML value as the text of the environment variable it stands for."""
    if isinstance(value, dict) and key == "client_groups":  # HEIMDALL_CLIENT_GROUPS holds JSON
        return json.dumps(value)
    if isinstance(value, dict):  # a table of zone = upstream(s): HEIMDALL_FORWARD_ZONES
        return ",".join(zone_text(zone, v) for zone, v in flatten(value).items())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value))
    raise ValueError(f"{type(value).__name__} is not a setting's value (a number, boolean, string, array or table)")


def home_of(key: str) -> str | None:
    return next((section for section, names in SECTIONS.items() if key in names), None)


def check_key(section: str, key: str, value: Any) -> str | None:
    """What is wrong with `key = value` in [section], or None."""
    home = home_of(key)
    if key == "config_file":
        return "the file cannot name itself (--config or HEIMDALL_CONFIG does)"
    if home is None:
        near = difflib.get_close_matches(key, PARSERS, n=1)
        return f"unknown setting {key!r}" + (f"; did you mean {near[0]!r} in [{home_of(near[0])}]?" if near else "")
    if home != section:
        return f"{key!r} belongs in [{home}]"
    if isinstance(value, dict) and key not in TABLES:
        return f"[{section}] {key}: dict is not a setting's value (a number, boolean, string or array)"
    try:
        PARSERS[key](as_setting_text(value, key))
    except ValueError as exc:
        return f"[{section}] {key}: {exc}"
    return None


def read(path: str) -> dict[str, str]:
    """The file's settings as the text their parsers take; ConfigFileError listing every problem."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError([Problem(path, 0, f"cannot read: {getattr(exc, 'strerror', None) or exc}")]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = SYNTAX_LINE.search(str(exc))
        raise ConfigFileError([Problem(path, int(m.group(1)) if m else 0, f"TOML: {exc}")]) from None
    lines = key_lines(text)
    problems: list[Problem] = []
    values: dict[str, str] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            home = home_of(section)
            where = f"; put it under [{home}]" if home else ""
            problems.append(Problem(path, lines.get(("", section), 0), f"{section!r} is outside any section{where}"))
            continue
        if section not in SECTIONS:
            problems.append(Problem(path, lines.get((section, HEADER_KEY), 0),
                                    f"unknown section [{section}]; sections: {', '.join(SECTIONS)}"))
            continue
        if section == "forward":
            table, zones = forward_zones(path, table, lines, problems)
            if zones:
                values["forward_zones"] = zones
        for key, value in table.items():
            problem = check_key(section, key, value)
            if problem:
                problems.append(Problem(path, lines.get((section, key), 0), problem))
            else:
                values[key] = ",".join(filter(None, (values.get(key, ""), as_setting_text(value, key))))
    if problems:
        raise ConfigFileError(sorted(problems, key=lambda p: p.line))
    return values


def forward_zones(path: str, table: dict[str, Any], lines: dict[tuple[str, str], int],
                  problems: list[Problem]) -> tuple[dict[str, Any], str]:
    """[forward]: its settings, and its other keys as zones (`lan = "192.168.1.1:53"`,
    `"corp.example" = ["10.0.0.53", "10.0.0.54"]`) in HEIMDALL_FORWARD_ZONES's text."""
    settings = {k: v for k, v in table.items() if k in SECTIONS["forward"]}
    zones = []
    for zone, value in flatten({k: v for k, v in table.items() if k not in settings}).items():
        try:
            zones.append(zone_text(zone, value))
        except ValueError as exc:
            problems.append(Problem(path, lines.get(("forward", zone), 0), f"[forward] {exc}"))
    return settings, ",".join(zones)


def toml_value(value: Any) -> str:
    """A setting's default written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(str(v)) for v in value) + "]"
    if value is None:
        return '"disabled"'
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def example() -> str:
    """Every setting with its default and help, section by section: what `heimdall config example` prints."""
    defaults = Config()
    helps = {f.name: f.metadata["help"] for f in fields(Config)}
    out = ["# Heimdall's configuration: every setting, at its default. `heimdall serve --config FILE`;",
           "# `heimdall config check FILE` reports every error as FILE:LINE. Each key is also an environment",
           "# variable (HEIMDALL_ + the key in upper case) and a flag (--key-with-dashes); flags win over the",
           "# environment, which wins over this file. Written by `heimdall config example`."]
    for section, names in SECTIONS.items():
        out += ["", f"[{section}]"]
        for name in names:
            if name != "config_file":
                out += [f"# {helps[name]}", f"{name} = {toml_value(getattr(defaults, name))}"]
    return "\n".join(out) + "\n"
