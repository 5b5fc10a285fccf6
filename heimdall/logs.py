"""One logging path for every process of the server: `logging`, with a level and text or JSON lines on stderr.

Text lines read `heimdall[PID] LEVEL: message`. Under systemd (JOURNAL_STREAM
set) each line starts with the syslog priority (`<6>`), which journald turns
into the entry's level, so `journalctl -p warning` works without a JSON parser.
JSON lines (HEIMDALL_LOG_FORMAT=json) carry time, level, logger, pid and message,
for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "heimdall[%(process)d] %(levelname)s: %(message)s"
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Text lines with the `<N>` priority prefix journald reads (sd-daemon(3))."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "pid": record.process,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if os.environ.get("JOURNAL_STREAM"):
        return JournalFormatter(TEXT_FORMAT)
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """(Re)configure the root logger: one stderr handler, so a reload changes the level in place."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "heimdall", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.heimdall = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(make_formatter(fmt))
    root.setLevel(level.upper())
