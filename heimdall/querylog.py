"""The query log (HEIMDALL_QUERY_LOG=path): one JSON line per query, written off the loop.

``log()`` is the only call on the hot path: it appends a tuple to a bounded
``deque`` (no formatting, no I/O). A writer thread wakes every
``flush_interval`` seconds, or as soon as ``batch_size`` entries wait, formats
them as JSON lines and writes them in one batch. Opening the file also happens
in that thread, so a slow disk, a full disk or a FIFO without a reader never
stalls the event loop.

When the buffer holds ``max_buffer`` entries, new ones are dropped and
counted (``dropped``). A failing open or write drops that batch, is logged
once (and once more when writing works again), and is retried on the next
batch. ``reopen()`` starts a new file after log rotation.

Each batch is one ``write()`` on an ``O_APPEND`` descriptor, so N workers may
share one path: the kernel keeps each batch whole, lines never interleave.

Line format::

    {"ts": 1764211200.123456, "client": "192.0.2.1", "protocol": "udp",
     "name": "www.example.com.", "type": "A", "rcode": "NOERROR",
     "ms": 0.081, "cached": true, "blocked": false}
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time

from heimdall import wire
from heimdall.mnemonics import qtype_text, rcode_text
from heimdall.outcome import How
from heimdall.transport import Transport, label

log = logging.getLogger(__name__)


def wire_to_text(qname: bytes) -> str:
    """b"\\x03www\\x07example\\x00" -> "www.example." (non-ASCII bytes escaped)."""
    labels, i = [], 0
    while i < len(qname) and qname[i]:
        n = qname[i]
        labels.append(qname[i + 1:i + 1 + n].decode("ascii", "backslashreplace"))
        i += n + 1
    return ".".join(labels) + "."


def format_entry(e: tuple) -> str:
    ts, client, protocol, qname, qtype, rcode, seconds, cached, blocked = e
    return json.dumps({
        "ts": round(ts, 6), "client": client, "protocol": protocol,
        "name": wire_to_text(bytes(qname)) if isinstance(qname, (bytes, bytearray)) else qname,
        "type": qtype_text(qtype), "rcode": rcode_text(rcode),
        "ms": round(seconds * 1000, 3), "cached": cached, "blocked": blocked,
    }, separators=(", ", ": "))


class QueryLog:
    """Buffered JSON-lines query log with a writer thread; see the module doc."""

    def __init__(self, path: str, flush_interval: float = 1.0, batch_size: int = 1000,
                 max_buffer: int = 50_000) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self._buf: collections.deque[tuple] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._reopen = False
        self._fd: int | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="heimdall-querylog", daemon=True)
        self.dropped = 0   # entries lost to a full buffer or a failed write
        self.written = 0

    def start(self) -> "QueryLog":
        self._thread.start()
        return self

    def log(self, client: str, qname: bytes | str, qtype: int, rcode: int, seconds: float,
            cached: bool = False, blocked: bool = False, protocol: str = "udp",
            ts: float | None = None) -> None:
        """Hot path: queue one entry (qname as wire bytes or text); never blocks."""
        buf = self._buf
        if len(buf) >= self.max_buffer:
            self.dropped += 1
            return
        buf.append((ts or time.time(), client, protocol, qname, qtype, rcode, seconds, cached, blocked))
        if len(buf) == self.batch_size:
            self._wake.set()

    def observe(self, data: bytes, reply: bytes, client: object, transport: Transport, seconds: float,
                how: How) -> None:
        """The pipeline's observer: one line per reply it sends."""
        qend, qtype = wire.reply_question(reply)
        rcode = reply[3] & wire.RCODE_MASK if len(reply) > 3 else 0
        ip = client[0] if isinstance(client, tuple) else str(client)
        name = reply[12:qend - 4] if qend > 0 else b""
        self.log(ip, name, qtype, rcode, seconds, cached=how == How.CACHED, blocked=how == How.BLOCKED,
                 protocol=label(transport))

    def pending(self) -> int:
        return len(self._buf)

    def reopen(self) -> None:
        """Close and reopen the file at the next batch (after log rotation)."""
        self._reopen = True
        self._wake.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued and stop; False if the writer did not finish in time."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stopping = self._stop
            while self._buf:
                self._write_batch()
            if stopping:
                break
        self._close_file()

    def _take(self) -> list[tuple]:
        buf, out = self._buf, []
        for _ in range(min(len(buf), self.batch_size)):
            out.append(buf.popleft())
        return out

    def _write_batch(self) -> None:
        batch = self._take()
        if not batch:
            return
        try:
            text = "".join(format_entry(e) + "\n" for e in batch)
            if self._reopen:
                self._reopen = False
                self._close_file()
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            data = memoryview(text.encode("utf-8"))
            while data:  # one write() per batch; a loop only after a partial write
                data = data[os.write(self._fd, data):]
        except (OSError, ValueError, TypeError) as e:
            self.dropped += len(batch)
            self._close_file()
            if not self._failing:
                log.error("query log %s: %s; dropping lines until it works again", self.path, e)
                self._failing = True
            return
        self.written += len(batch)
        if self._failing:
            log.warning("query log %s works again (%d lines dropped so far)", self.path, self.dropped)
            self._failing = False

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
