"""Blocklists and allowlists: loaded from list files, matched at constant cost.

The files' formats are heimdall/listformat.py's. Allowlist files use the same
formats and win over blocks; invalid lines are logged with file:line, never
fatal. An entry may also be an http(s) URL: it is read from its last good
download (heimdall/subscriptions.py keeps it under the state directory), and
a URL with no download yet fails the load as a missing file would.

Matching (the hot path) takes the *lower-cased wire-format qname*, e.g.
``b"\\x03www\\x07example\\x03com\\x00"``: the server already has it as part of
its cache key, and walking it by label-length bytes needs no ``str`` work.
Each label costs one slice and one ``frozenset`` lookup, whatever the list's
size. ``match_name()`` accepts a dotted string for tests and tools.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from heimdall.listfetch import is_url, redact
from heimdall.listformat import BlocklistError, InvalidLine, ParseResult, parse_file, to_wire
from heimdall.wire import c_ext

if TYPE_CHECKING:
    from heimdall.subscriptions import Subscriptions

__all__ = ["Blocklist", "BlocklistError", "BlocklistManager", "load_blocklists", "to_wire"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A loaded file and the mtime it had, for reload-on-change."""

    path: str
    mtime_ns: int
    kind: str  # "block" or "allow"
    url: str = ""  # the list's URL when `path` is its saved copy


def py_suffix_in(qname: bytes, names: frozenset[bytes], skip_tld: bool) -> int:
    """The offset of qname's first suffix at a label start that is in names, or -1 (the root alone is
    never looked up; with skip_tld, the last label is not either). The reference of the C walk."""
    i = 0
    end = len(qname) - 1
    while i < end:
        n = i + qname[i] + 1
        if skip_tld and n >= end:
            break
        if qname[i:] in names:
            return i
        i = n
    return -1


# heimdall/_hotpath.c: the same walk without an interpreted step per label
suffix_in: Callable[[bytes, frozenset[bytes], bool], int] = getattr(c_ext, "suffix_in", py_suffix_in)


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
        hit = suffix_in(qname, self._block, self._skip_tld)
        return hit >= 0 and self._decide(qname, hit)

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

    def changed(self, copies: bool = True) -> bool:
        """True when a source file's mtime differs from the one loaded (or it vanished).

        `copies=False` looks at list files only, not at the saved copies of URLs.
        """
        for s in self.sources:
            if s.url and not copies:
                continue
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


def no_urls(url: str) -> str:
    raise BlocklistError(f"{redact(url)}: a list URL needs the server's downloads (heimdall serve)")


def load_blocklists(block_files: Iterable[str], allow_files: Iterable[str] = (),
                    copy_of: Callable[[str], str] = no_urls) -> Blocklist:
    """Load every list; raises BlocklistError (old lists stay in use) if one is unreadable.

    A URL entry is read from the file `copy_of(url)` names (its saved copy).
    Invalid lines are logged (the first MAX_LOGGED_INVALID with file:line,
    then a count) and skipped.
    """
    block_files, allow_files = list(block_files), list(allow_files)
    sources: list[Source] = []
    r = ParseResult()
    for kind, files in (("block", block_files), ("allow", allow_files)):
        for entry in files:
            url = entry if is_url(entry) else ""
            path = copy_of(url) if url else entry
            mtime = _mtime(path)  # before reading: a write during the read shows as a change
            parse_file(path, allow_file=(kind == "allow"), result=r, name=redact(url) if url else None)
            sources.append(Source(path, mtime, kind, url))
    for bad in r.invalid:
        log.warning("%s:%d: ignored invalid line (%s): %r", bad.path, bad.lineno, bad.reason, bad.text.rstrip())
    if r.invalid_count > len(r.invalid):
        log.warning("%d more invalid lines ignored", r.invalid_count - len(r.invalid))
    bl = Blocklist(r.exact, r.wildcard, r.exceptions, r.exception_wildcards,
                   r.invalid_count, tuple(r.invalid), tuple(sources))
    r.exact.clear()  # free the build sets now, not at the caller's leisure
    urls = sum(1 for s in sources if s.url)
    log.info("blocklists loaded: %d blocked, %d allowed, %d invalid lines, from %d files%s",
             bl.entries, bl.allow_entries, bl.invalid_lines, len(sources) - urls,
             f" and {urls} URLs" if urls else "")
    return bl


EMPTY = Blocklist()


class BlocklistManager:
    """Holds the current Blocklist; reloads keep the old one when a file is unreadable or empty.

    The server reads ``manager.current`` per query (one attribute load) or
    copies it into its own attribute after each successful reload. With
    `subscriptions`, URL entries are read from their saved copies;
    ``fetch()`` downloads them (blocking: call it in a thread).
    """

    def __init__(self, block_files: Iterable[str], allow_files: Iterable[str] = (),
                 subscriptions: "Subscriptions | None" = None) -> None:
        self.block_files = list(block_files)
        self.allow_files = list(allow_files)
        self.subscriptions = subscriptions
        self.current: Blocklist = EMPTY
        self.last_error: str | None = None
        self._copies_tried: tuple[tuple[str, int], ...] = ()

    @property
    def urls(self) -> list[str]:
        """The URL entries of both kinds, each once."""
        return list(dict.fromkeys(e for e in self.block_files + self.allow_files if is_url(e)))

    def copy_of(self, url: str) -> str:
        """The file a URL's list is read from: its last good download."""
        if self.subscriptions is None:
            return no_urls(url)
        store = self.subscriptions.store
        if not store.has_copy(url):
            raise BlocklistError(f"{redact(url)}: not downloaded and no saved copy in {store.directory} "
                                 "(the fetch error is logged above)")
        return store.copy_path(url)

    def fetch(self, force: bool = True) -> dict[str, str]:
        """Download the URL lists (those due, or all with `force`); url -> result. Blocking."""
        if self.subscriptions is None or not self.urls:
            return {}
        return self.subscriptions.refresh_urls(self.urls, force)

    def _copies(self) -> tuple[tuple[str, int], ...]:
        """Each URL that has a saved copy, with the copy's mtime."""
        if self.subscriptions is None:
            return ()
        store = self.subscriptions.store
        out: list[tuple[str, int]] = []
        for url in self.urls:
            try:
                out.append((url, os.stat(store.copy_path(url)).st_mtime_ns))
            except OSError:
                pass  # not downloaded yet: nothing to load until its copy appears
        return tuple(out)

    def copies_changed(self) -> bool:
        """True when a saved copy was replaced or appeared (or a URL with a copy left the config)
        since the last load was tried: a reload that failed is not tried again until one does."""
        return self._copies() != self._copies_tried

    def load(self) -> Blocklist:
        """First load: errors propagate (a missing list at start is a config error)."""
        self._copies_tried = self._copies()
        self.current = load_blocklists(self.block_files, self.allow_files, self.copy_of)
        return self.current

    def reload(self) -> bool:
        """True if new lists are in use; False (old lists kept, reason logged) otherwise."""
        self._copies_tried = self._copies()
        try:
            if self.current.entries:
                for path in self.block_files:
                    if is_url(path):
                        continue  # a saved copy is never empty: an empty download is refused
                    try:
                        empty = os.path.getsize(path) == 0
                    except OSError:
                        continue  # load_blocklists says why
                    if empty:  # a list updater's `> file` before it writes: not a request to unblock all
                        raise BlocklistError(f"list file {path} is empty (truncated?); "
                                             "to clear it on purpose, leave a comment line in it")
            new = load_blocklists(self.block_files, self.allow_files, self.copy_of)
        except BlocklistError as e:
            self.last_error = str(e)
            log.error("blocklist reload failed, keeping the %d entries loaded before: %s",
                      self.current.entries, e)
            return False
        self.current, self.last_error = new, None
        return True

    def reload_if_changed(self) -> bool:
        """For HEIMDALL_BLOCKLIST_RELOAD_INTERVAL: reload when a file's mtime moved."""
        return (self.current.changed() or self.copies_changed()) and self.reload()
