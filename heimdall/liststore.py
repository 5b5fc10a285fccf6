"""The last good copy of each list URL, kept under the state directory with its validators.

``<state dir>/lists/<host>-<file>-<hash>.list`` is the body as downloaded;
``….json`` beside it says where it came from and what makes the next request
conditional: ``{"url", "etag", "last_modified", "sha256", "bytes", "entries",
"changed", "checked"}`` (``changed``: when this content was downloaded;
``checked``: the last successful fetch, a 304 included; both epoch seconds).
Both are written atomically (heimdall/atomic.py), the list before its
metadata: a crash between the two leaves new content under old validators,
which costs one full download, never a wrong 304. A copy whose size or
SHA-256 does not match its metadata is used, but its validators are not.

The state directory: ``HEIMDALL_STATE_DIR`` when set; else
``$STATE_DIRECTORY`` (systemd sets it from ``StateDirectory=heimdall``);
else ``/var/lib/heimdall`` when it is writable or can be made; else
``$XDG_STATE_HOME/heimdall`` (``~/.local/state/heimdall``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from heimdall.atomic import atomic_write_bytes, atomic_write_json
from heimdall.listfetch import Validators

SYSTEM_STATE_DIR = "/var/lib/heimdall"


def default_state_dir(environ: dict[str, str] | None = None) -> str:
    """Where downloaded lists live when HEIMDALL_STATE_DIR is not set (see the module's docstring)."""
    env = dict(os.environ if environ is None else environ)
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    system = Path(SYSTEM_STATE_DIR)
    if (system.is_dir() and os.access(system, os.W_OK | os.X_OK)) or \
            (not system.exists() and os.access(system.parent, os.W_OK | os.X_OK)):
        return str(system)
    home = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(home, "heimdall")


def check_writable(directory: str) -> None:
    """Make `directory` and prove a file can be written in it; OSError with the reason otherwise."""
    os.makedirs(directory, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
    os.close(fd)
    os.unlink(probe)


@dataclass(frozen=True)
class SavedCopy:
    url: str
    etag: str = ""
    last_modified: str = ""
    sha256: str = ""
    bytes: int = 0
    entries: int = 0
    changed: float = 0.0
    checked: float = 0.0
    intact: bool = True  # the list file matches size and sha256 (only checked when asked)

    @property
    def validators(self) -> Validators:
        return Validators(self.etag, self.last_modified) if self.intact else Validators()


def _slug(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    tail = parts.path.rstrip("/").rpartition("/")[2]
    text = f"{parts.hostname or 'list'}-{tail}" if tail else parts.hostname or "list"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]


class ListStore:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.directory = os.path.join(state_dir, "lists")

    def base(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        return os.path.join(self.directory, f"{_slug(url)}-{digest}")

    def copy_path(self, url: str) -> str:
        return self.base(url) + ".list"

    def meta_path(self, url: str) -> str:
        return self.base(url) + ".json"

    def has_copy(self, url: str) -> bool:
        return os.path.isfile(self.copy_path(url))

    def read(self, url: str, verify: bool = False) -> SavedCopy | None:
        """The saved copy's metadata, or None when there is no list file.

        A list file without readable metadata still counts (validators empty);
        with `verify`, its size and SHA-256 are compared with the metadata.
        """
        path = self.copy_path(url)
        try:
            size = os.path.getsize(path)
        except OSError:
            return None
        try:
            with open(self.meta_path(url)) as f:
                d = json.load(f)
            meta = SavedCopy(url, str(d.get("etag") or ""), str(d.get("last_modified") or ""),
                             str(d.get("sha256") or ""), int(d.get("bytes") or 0), int(d.get("entries") or 0),
                             float(d.get("changed") or 0), float(d.get("checked") or 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return SavedCopy(url, bytes=size, intact=False)
        if meta.bytes != size:
            return replace(meta, bytes=size, intact=False)
        if verify:
            try:
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError:
                return replace(meta, intact=False)
            if digest != meta.sha256:
                return replace(meta, intact=False)
        return meta

    def save(self, url: str, body: bytes, validators: Validators, entries: int, now: float | None = None) -> SavedCopy:
        """Replace the copy of `url` with `body` (then its metadata), each atomically."""
        now = time.time() if now is None else now
        meta = SavedCopy(url, validators.etag, validators.last_modified, hashlib.sha256(body).hexdigest(),
                         len(body), entries, now, now)
        atomic_write_bytes(self.copy_path(url), body)
        self._write_meta(meta)
        return meta

    def touch(self, meta: SavedCopy, validators: Validators, now: float | None = None) -> SavedCopy:
        """A fetch confirmed the copy (304, or the same bytes again): new validators and `checked` time."""
        meta = replace(meta, etag=validators.etag, last_modified=validators.last_modified,
                       checked=time.time() if now is None else now)
        self._write_meta(meta)
        return meta

    def _write_meta(self, meta: SavedCopy) -> None:
        d = asdict(meta)
        del d["intact"]
        atomic_write_json(self.meta_path(meta.url), d)
