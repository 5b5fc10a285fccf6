"""List files: every line's format detected on its own, so one file may mix them.

* hosts lines ``0.0.0.0 a.example b.example`` (any IP first, several names);
* plain domains ``ads.example``;
* AdGuard/ABP ``||ads.example^`` and exceptions ``@@||ads.example^`` (the
  exception goes to the allow set);
* wildcards ``*.ads.example`` (strict subdomains only);
* comments ``# ...`` and ``! ...``, ``[Adblock Plus 2.0]`` headers, inline
  `` # ...`` comments, blank lines, CRLF line ends.

A line that is not a valid domain (bad characters, a label over 63 bytes, a
name over 253, empty labels, an IP address as a name, ABP rules with options,
paths, regexes or cosmetic filters) is counted and kept as a sample with
file:line, never fatal. Names are kept in wire format (heimdall/blocklist.py
matches them without str work).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

MAX_LOGGED_INVALID = 20  # per load: this many invalid lines individually, then a count

_NAME_RE = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_IPV4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Names every hosts file lists for itself; they are neither blocked nor invalid.
_HOSTS_SELF = frozenset({
    "localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
    "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
    "ip6-allhosts", "0.0.0.0",
})


class BlocklistError(Exception):
    """A list file could not be read: a reload must keep the old lists."""


@dataclass(frozen=True)
class InvalidLine:
    path: str
    lineno: int
    text: str
    reason: str


@dataclass
class ParseResult:
    """What the files contributed, as wire-format names (no str copies kept)."""

    exact: set[bytes] = field(default_factory=set)
    wildcard: set[bytes] = field(default_factory=set)
    exceptions: set[bytes] = field(default_factory=set)
    exception_wildcards: set[bytes] = field(default_factory=set)
    invalid: list[InvalidLine] = field(default_factory=list)
    invalid_count: int = 0


_LEN_BYTE = [bytes((i,)) for i in range(256)]


def to_wire(name: str) -> bytes:
    """Dotted lower-case ASCII name -> wire format (``b"\\x03www...\\x00"``)."""
    if not name or name == ".":
        return b"\x00"
    return b"".join([_LEN_BYTE[len(label)] + label for label in name.rstrip(".").encode().split(b".")]) + b"\x00"


def _plainly_valid(name: str) -> bool:
    """Fast check for the common case; False means "ask _validate", not "invalid"."""
    return len(name) <= 253 and not name[-1].isdigit() and _NAME_RE.fullmatch(name) is not None


def _validate(name: str) -> tuple[str | None, str]:
    """Return (normalised name, "") or (None, reason)."""
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return None, "empty name"
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None, "not a valid internationalised name"
    if _NAME_RE.fullmatch(name) is None:
        if ".." in name or name.startswith("."):
            return None, "empty label"
        if any(len(label) > 63 for label in name.split(".")):
            return None, "label longer than 63 bytes"
        return None, "invalid characters"
    if len(name) > 253:
        return None, "name longer than 253 bytes"
    if name.rpartition(".")[2].isdigit():
        return None, "IP address, not a name"
    return name, ""


def _looks_like_ip(token: str) -> bool:
    return ":" in token or _IPV4_RE.fullmatch(token) is not None


class _Collector:
    """Accumulates one file's rules; knows where each goes (block/allow)."""

    def __init__(self, path: str, allow_file: bool, result: ParseResult) -> None:
        self.path = path
        self.allow_file = allow_file
        self.r = result

    def bad(self, lineno: int, text: str, reason: str) -> None:
        self.r.invalid_count += 1
        if len(self.r.invalid) < MAX_LOGGED_INVALID:
            self.r.invalid.append(InvalidLine(self.path, lineno, text[:200], reason))

    def add_valid(self, name: str) -> None:
        """A name already known valid, from a plain block line (the fast path)."""
        (self.r.exceptions if self.allow_file else self.r.exact).add(to_wire(name))

    def add(self, lineno: int, text: str, raw: str, exception: bool) -> None:
        wildcard = raw.startswith("*.")
        if wildcard:
            raw = raw[2:]
        name, reason = _validate(raw)
        if name is None:
            self.bad(lineno, text, reason)
            return
        if exception or self.allow_file:
            (self.r.exception_wildcards if wildcard else self.r.exceptions).add(to_wire(name))
        else:
            (self.r.wildcard if wildcard else self.r.exact).add(to_wire(name))


def _parse_abp(c: _Collector, lineno: int, text: str, line: str) -> None:
    exception = line.startswith("@@")
    body = line[2:] if exception else line
    if not body.startswith("||"):
        c.bad(lineno, text, "unsupported adblock rule (only ||name^ is supported)")
        return
    body = body[2:]
    if body.endswith("^|"):
        body = body[:-1]
    if not body.endswith("^") or "$" in body or "/" in body or "^" in body[:-1]:
        c.bad(lineno, text, "unsupported adblock rule (options, paths or missing ^)")
        return
    c.add(lineno, text, body[:-1], exception)


def parse_line(c: _Collector, lineno: int, text: str) -> None:
    """Classify one line by its own shape and record it."""
    line = text.strip().lower()
    if not line or line[0] in "#![":
        return
    # Fast paths for the three commonest shapes: "name", "0.0.0.0 name", "||name^".
    if " " not in line:
        if line.startswith("||") and line.endswith("^") and _plainly_valid(line[2:-1]):
            c.add_valid(line[2:-1])
            return
        if _plainly_valid(line):
            c.add_valid(line)
            return
    elif line.startswith("0.0.0.0 ") or line.startswith("127.0.0.1 "):
        rest = line[line.index(" ") + 1:].strip()
        if _plainly_valid(rest) and rest not in _HOSTS_SELF:
            c.add_valid(rest)
            return
    if "#" in line:
        cut = line.find("#")
        if line[cut - 1] not in " \t":
            c.bad(lineno, text, "unsupported rule (cosmetic filter or '#' in a name)")
            return
        line = line[:cut].rstrip()
    if line.startswith("||") or line.startswith("@@") or line[0] in "|/":
        _parse_abp(c, lineno, text, line)
        return
    tokens = line.split()
    if len(tokens) == 1:
        if _looks_like_ip(tokens[0]):
            c.bad(lineno, text, "IP address without a name")
            return
        c.add(lineno, text, tokens[0], False)
        return
    if not _looks_like_ip(tokens[0]):
        c.bad(lineno, text, "several words and no IP address first")
        return
    for token in tokens[1:]:
        if token not in _HOSTS_SELF:
            c.add(lineno, text, token, False)


def parse_lines(lines: Iterable[str], name: str, allow_file: bool = False,
                result: ParseResult | None = None) -> ParseResult:
    """Parse lines of one list; `name` (a path or URL) is what invalid lines are reported with."""
    result = result if result is not None else ParseResult()
    c = _Collector(name, allow_file, result)
    for lineno, text in enumerate(lines, 1):
        parse_line(c, lineno, text)
    return result


def parse_file(path: str, allow_file: bool = False, result: ParseResult | None = None,
               name: str | None = None) -> ParseResult:
    """Parse one list file; raises BlocklistError when it cannot be read.

    `name` replaces the path in invalid-line reports (a URL's saved copy is reported by its URL).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_lines(f, name or path, allow_file, result)
    except OSError as e:
        raise BlocklistError(f"cannot read list file {path}: {e.strerror or e}") from e


def names_in(result: ParseResult) -> int:
    """How many names (blocked, wildcard and allowed) a parse found."""
    return len(result.exact) + len(result.wildcard) + len(result.exceptions) + len(result.exception_wildcards)
