"""Lists subscribed by URL: fetch, keep the last good copy, say what happened.

An entry of HEIMDALL_BLOCKLISTS / HEIMDALL_ALLOWLIST that starts with
``http://`` or ``https://`` is a subscription. ``check(url)`` is one refresh
of one URL, and these are its rules:

* a download (heimdall/listfetch.py) that failed (``error``, ``http_error``,
  ``truncated``, ``oversized``, ``empty``) changes nothing on disk: the saved
  copy, if any, stays the list;
* a whole body that parses to no names at all (an HTML error page served
  with 200, a placeholder) is refused as ``empty`` too;
* the same bytes again (a server without validators) is ``unchanged``: the
  copy is not rewritten, so no worker reloads;
* ``not_modified`` (HTTP 304) keeps the copy and stores any new validators;
* otherwise the body replaces the copy (heimdall/liststore.py, atomically)
  and the result is ``updated``: only then do the workers reload.

Each check logs one line (URL, result, HTTP status, bytes, entries, time)
and updates the URL's figures for /metrics. Checks are blocking: at start
they run before fork; in a worker, in a thread (heimdall/blocking.py).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from heimdall.listfetch import FAILURES, Download, fetch_url, redact
from heimdall.listformat import ParseResult, names_in, parse_lines
from heimdall.liststore import ListStore, SavedCopy

log = logging.getLogger("heimdall.lists")

RESULTS = ("updated", "not_modified", "unchanged") + FAILURES
OK = frozenset(("updated", "not_modified", "unchanged"))
RETRY_AFTER_FAILURE = 600.0  # a failed URL is tried again after this long (or the refresh interval if shorter)
PARALLEL = 4  # URLs downloaded at once


@dataclass
class UrlStatus:
    """One URL's figures as /metrics shows them (the worker that downloads reports them)."""

    fetches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    bytes: int = 0            # size of the copy in use
    entries: int = 0          # names in it
    last_success: float = 0.0  # epoch seconds of the last fetch that confirmed or replaced the copy
    last_result: str = ""
    due: float = 0.0          # time.monotonic() of the next check

    def to_json(self) -> dict:
        return {"fetches": dict(self.fetches), "bytes": self.bytes, "entries": self.entries,
                "last_success": self.last_success, "last_result": self.last_result}


def count_names(body: bytes, url: str) -> int:
    """Names a body holds, parsed as the server will parse its copy (any line format)."""
    return names_in(parse_lines(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", errors="replace"),
                                url, result=ParseResult()))


class Subscriptions:
    def __init__(self, store: ListStore, refresh: float = 4 * 3600.0, max_bytes: int = 64 << 20,
                 timeout: float = 120.0, fetch: Callable[..., Download] = fetch_url) -> None:
        self.store = store
        self.refresh = refresh
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.fetch = fetch
        self.status: dict[str, UrlStatus] = {}
        self._lock = threading.Lock()  # status is read by the loop while a thread checks

    def _status(self, url: str) -> UrlStatus:
        with self._lock:
            return self.status.setdefault(url, UrlStatus())

    def check(self, url: str) -> str:
        """Fetch `url` once and apply the keep rules; the result (one of RESULTS)."""
        saved = self.store.read(url, verify=True)
        sent = saved.validators if saved is not None else None
        d = self.fetch(url, sent or None, max_bytes=self.max_bytes, timeout=self.timeout)
        result, detail, entries, kept = d.result, d.detail, 0, saved
        if d.result == "ok":
            digest = hashlib.sha256(d.body).hexdigest()
            if saved is not None and saved.intact and saved.sha256 == digest:
                result, kept = "unchanged", self.store.touch(saved, d.validators)
            else:
                entries = count_names(d.body, redact(url))
                if entries == 0:
                    result, detail = "empty", f"no names in {len(d.body)} bytes"
                else:
                    result, kept = "updated", self.store.save(url, d.body, d.validators, entries)
        elif d.result == "not_modified":
            if saved is None or not sent:
                result, detail = "error", "HTTP 304 to a request that was not conditional"
            else:
                kept = self.store.touch(saved, d.validators)
        self._record(url, result, kept)
        self._log(url, result, d, detail, kept)
        return result

    def _record(self, url: str, result: str, kept: SavedCopy | None) -> None:
        s = self._status(url)
        with self._lock:
            s.fetches[result] = s.fetches.get(result, 0) + 1
            s.last_result = result
            if kept is not None:
                s.bytes, s.entries = kept.bytes, kept.entries
            if result in OK:
                s.last_success = time.time()
            s.due = time.monotonic() + (self.refresh if result in OK else min(self.refresh, RETRY_AFTER_FAILURE))

    def _log(self, url: str, result: str, d: Download, detail: str, kept: SavedCopy | None) -> None:
        http = f"HTTP {d.status}" if d.status else "no HTTP answer"
        took = f"{d.seconds:.2f}s"
        name = redact(url)
        if result in OK:
            what = "downloaded" if result == "updated" else "kept"
            assert kept is not None
            log.info(f"blocklist {name}: {result} ({http}), {what} {kept.bytes} bytes, {kept.entries} entries, {took}")
            return
        keep = (f"keeping the saved copy ({kept.bytes} bytes, {kept.entries} entries, from "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(kept.changed))})" if kept is not None
                else "no saved copy to fall back on")
        log.warning(f"blocklist {name}: {result} ({http}: {detail}), {d.received} bytes received, {took}; {keep}")

    def refresh_urls(self, urls: Iterable[str], force: bool = False) -> dict[str, str]:
        """Check every URL that is due (all of them with `force`), PARALLEL at a time: url -> result."""
        now = time.monotonic()
        todo = [u for u in dict.fromkeys(urls) if force or self._status(u).due <= now]
        results: dict[str, str] = {}
        if not todo:
            return results
        pending = iter(todo)
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    url = next(pending, None)
                if url is None:
                    return
                try:
                    results[url] = self.check(url)
                except Exception as exc:  # noqa: BLE001 - a disk error, say: the copy stays, the loop goes on
                    log.error(f"blocklist {redact(url)}: refresh failed: {exc!r}")
                    self._record(url, "error", self.store.read(url))
                    results[url] = "error"

        threads = [threading.Thread(target=work, name="heimdall-fetch", daemon=True)
                   for _ in range(min(PARALLEL, len(todo)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def seconds_until_due(self, urls: Iterable[str]) -> float:
        now = time.monotonic()
        return max(0.0, min((self._status(u).due - now for u in urls), default=float("inf")))

    def adopt_saved(self, urls: Iterable[str]) -> None:
        """A worker that starts downloading (a restarted worker 0) takes the figures and the schedule
        from the copies on disk, which may be newer than what it inherited from before fork."""
        wall, mono = time.time(), time.monotonic()
        for url in urls:
            meta = self.store.read(url)
            s = self._status(url)
            if meta is None or meta.checked <= s.last_success:
                continue
            with self._lock:
                s.bytes, s.entries, s.last_success = meta.bytes, meta.entries, meta.checked
                s.due = mono + max(0.0, meta.checked + self.refresh - wall)

    def snapshot(self, urls: Iterable[str]) -> dict[str, dict]:
        """The figures of the configured URLs (labels redacted), for metrics."""
        out = {}
        for url in urls:
            s = self._status(url)
            with self._lock:
                out[redact(url)] = s.to_json()
        return out
