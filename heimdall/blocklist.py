"""Blocklists and allowlists: parsing many formats, matching at constant cost.

Every line's format is detected on its own, so one file may mix them:

* hosts lines ``0.0.0.0 a.example b.example`` (any IP first, several names);
* plain domains ``ads.example``;
* AdGuard/ABP ``||ads.example^`` and exceptions ``@@||ads.example^`` (the
  exception goes to the allow set);
* wildcards ``*.ads.example`` (strict subdomains only);
* comments ``# ...`` and ``! ...``, ``[Adblock Plus 2.0]`` headers, inline
  `` # ...`` comments, blank lines, CRLF line ends.

A line that is not a valid domain (bad characters, a label over 63 bytes, a
name over 253, empty labels, an IP address as a name, ABP rules with options,
paths, regexes or cosmetic filters) is counted and logged with file:line,
never fatal. Allowlist files use the same formats and win over blocks.

Matching (the hot path) takes the *lower-cased wire-format qname*, e.g.
``b"\\x03www\\x07example\\x03com\\x00"``: the server already has it as part of
its cache key, and walking it by label-length bytes needs no ``str`` work.
Each label costs one slice and one ``frozenset`` lookup, whatever the list's
size. ``match_name()`` accepts a dotted string for tests and tools.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

log = logging.getLogger(__name__)

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
class Source:
    """A loaded file and the mtime it had, for reload-on-change."""

    path: str
    mtime_ns: int
    kind: str  # "block" or "allow"


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


def parse_file(path: str, allow_file: bool = False, result: ParseResult | None = None) -> ParseResult:
    """Parse one list file; raises BlocklistError when it cannot be read."""
    result = result if result is not None else ParseResult()
    c = _Collector(path, allow_file, result)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, text in enumerate(f, 1):
                parse_line(c, lineno, text)
    except OSError as e:
        raise BlocklistError(f"cannot read list file {path}: {e.strerror or e}") from e
    return result


class Blocklist:
    """The matcher: frozensets of wire-format names, read-only after load.

    Build it before forking workers so its pages are shared; it is never
    mutated, a reload builds a new one and swaps the reference.
    """

    __slots__ = ("_block", "_block_wild", "_allow", "_allow_wild", "_skip_tld", "entries",
                 "allow_entries", "invalid_lines", "invalid_samples", "sources")

    def __init__(self, block: Iterable[bytes] = (), block_wild: Iterable[bytes] = (),
                 allow: Iterable[bytes] = (), allow_wild: Iterable[bytes] = (),
                 invalid_lines: int = 0, invalid_samples: tuple[InvalidLine, ...] = (),
                 sources: tuple[Source, ...] = ()) -> None:
        """Names in wire format; see from_names() for dotted ones."""
        block_wild = frozenset(block_wild)
        exact = frozenset(block)
        # One hot set: exact and wildcard names together; the rare hit is resolved by _decide.
        self._block: frozenset[bytes] = exact | block_wild if block_wild else exact
        self._block_wild: frozenset[bytes] = block_wild - exact
        # Without single-label entries ("com", "*.com") the last label never needs a lookup.
        self._skip_tld: bool = not any(len(w) == w[0] + 2 for w in self._block)
        self._allow: frozenset[bytes] = frozenset(allow)
        self._allow_wild: frozenset[bytes] = frozenset(allow_wild)
        self.entries: int = len(self._block)
        self.allow_entries: int = len(self._allow) + len(self._allow_wild)
        self.invalid_lines = invalid_lines
        self.invalid_samples = invalid_samples
        self.sources = sources

    @classmethod
    def from_names(cls, block: Iterable[str] = (), allow: Iterable[str] = ()) -> "Blocklist":
        """Build from dotted names; "*.x" means strict subdomains of x."""
        def split(names: Iterable[str]) -> tuple[list[bytes], list[bytes]]:
            names = [n.lower() for n in names]
            return ([to_wire(n) for n in names if not n.startswith("*.")],
                    [to_wire(n[2:]) for n in names if n.startswith("*.")])
        b, bw = split(block)
        a, aw = split(allow)
        return cls(b, bw, a, aw)

    def match(self, qname: bytes) -> bool:
        """True when the lower-cased wire-format qname (ending in b"\\0") is blocked."""
        block = self._block
        i = 0
        end = len(qname) - 1
        if self._skip_tld:
            while True:
                n = i + qname[i] + 1
                if n >= end:
                    return False
                if qname[i:] in block:
                    return self._decide(qname, i)
                i = n
        while i < end:
            if qname[i:] in block:
                return self._decide(qname, i)
            i += qname[i] + 1
        return False

    def _decide(self, qname: bytes, hit: int) -> bool:
        """Slow path after a hit: wildcard-only apex, then the allowlist."""
        if hit == 0 and qname in self._block_wild:
            # "*.x" does not block x itself; look for a block further up.
            i = qname[0] + 1
            end = len(qname) - 1
            while i < end:
                if qname[i:] in self._block:
                    return self._decide(qname, i)
                i += qname[i] + 1
            return False
        return not self.allowed(qname)

    def allowed(self, qname: bytes) -> bool:
        """True when an allowlist entry covers the wire-format qname."""
        if not self._allow and not self._allow_wild:
            return False
        if qname in self._allow:
            return True
        i = qname[0] + 1 if qname[0] else len(qname)
        end = len(qname) - 1
        while i < end:
            s = qname[i:]
            if s in self._allow or s in self._allow_wild:
                return True
            i += qname[i] + 1
        return False

    def match_name(self, name: str) -> bool:
        """Convenience for a dotted name in any case (not for the hot path)."""
        return self.match(to_wire(name.lower()))

    def changed(self) -> bool:
        """True when a source file's mtime differs from the one loaded (or it vanished)."""
        for s in self.sources:
            try:
                if os.stat(s.path).st_mtime_ns != s.mtime_ns:
                    return True
            except OSError:
                return True
        return False


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError as e:
        raise BlocklistError(f"cannot read list file {path}: {e.strerror or e}") from e


def load_blocklists(block_files: Iterable[str], allow_files: Iterable[str] = ()) -> Blocklist:
    """Load every list; raises BlocklistError (old lists stay in use) if one is unreadable.

    Invalid lines are logged (the first MAX_LOGGED_INVALID with file:line,
    then a count) and skipped.
    """
    block_files, allow_files = list(block_files), list(allow_files)
    sources: list[Source] = []
    r = ParseResult()
    for kind, files in (("block", block_files), ("allow", allow_files)):
        for path in files:
            mtime = _mtime(path)  # before reading: a write during the read shows as a change
            parse_file(path, allow_file=(kind == "allow"), result=r)
            sources.append(Source(path, mtime, kind))
    for bad in r.invalid:
        log.warning("%s:%d: ignored invalid line (%s): %r", bad.path, bad.lineno, bad.reason, bad.text.rstrip())
    if r.invalid_count > len(r.invalid):
        log.warning("%d more invalid lines ignored", r.invalid_count - len(r.invalid))
    bl = Blocklist(r.exact, r.wildcard, r.exceptions, r.exception_wildcards,
                   r.invalid_count, tuple(r.invalid), tuple(sources))
    r.exact.clear()  # free the build sets now, not at the caller's leisure
    log.info("blocklists loaded: %d blocked, %d allowed, %d invalid lines, from %d files",
             bl.entries, bl.allow_entries, bl.invalid_lines, len(sources))
    return bl


EMPTY = Blocklist()


class BlocklistManager:
    """Holds the current Blocklist; reloads keep the old one when a file is unreadable or empty.

    The server reads ``manager.current`` per query (one attribute load) or
    copies it into its own attribute after each successful reload.
    """

    def __init__(self, block_files: Iterable[str], allow_files: Iterable[str] = ()) -> None:
        self.block_files = list(block_files)
        self.allow_files = list(allow_files)
        self.current: Blocklist = EMPTY
        self.last_error: str | None = None

    def load(self) -> Blocklist:
        """First load: errors propagate (a missing list at start is a config error)."""
        self.current = load_blocklists(self.block_files, self.allow_files)
        return self.current

    def reload(self) -> bool:
        """True if new lists are in use; False (old lists kept, reason logged) otherwise."""
        try:
            if self.current.entries:
                for path in self.block_files:
                    try:
                        empty = os.path.getsize(path) == 0
                    except OSError:
                        continue  # load_blocklists says why
                    if empty:  # a list updater's `> file` before it writes: not a request to unblock all
                        raise BlocklistError(f"list file {path} is empty (truncated?); "
                                             "to clear it on purpose, leave a comment line in it")
            new = load_blocklists(self.block_files, self.allow_files)
        except BlocklistError as e:
            self.last_error = str(e)
            log.error("blocklist reload failed, keeping the %d entries loaded before: %s",
                      self.current.entries, e)
            return False
        self.current, self.last_error = new, None
        return True

    def reload_if_changed(self) -> bool:
        """For HEIMDALL_BLOCKLIST_RELOAD_INTERVAL: reload when a file's mtime moved."""
        return self.current.changed() and self.reload()
