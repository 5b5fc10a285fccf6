"""One log line format for every process of the server: `heimdall[PID]: message` on stderr."""

from __future__ import annotations

import logging
import os
import sys


def log(msg: str) -> None:
    print(f"heimdall[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def setup_logging() -> None:
    """Modules that log through `logging` print in the same format as `log`."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("heimdall[%(process)d]: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
