"""The UDP listener: the hot path as the socket's readable callback, the pipeline for the rest.

`reader()` picks the C hot path (heimdall/_hotpath.c) where it can serve, or
its Python twin (heimdall/hotpath.py). Both answer fresh cache hits
themselves and hand every other datagram to `slow`, which passes it to the
pipeline with a `send` that answers the datagram's sender.
"""

from __future__ import annotations

import importlib
import logging
import socket
from types import ModuleType
from typing import Any, Callable

from heimdall.config import Config
from heimdall.hotpath import PyHotPath
from heimdall.pipeline import Pipeline
from heimdall.transport import Transport

log = logging.getLogger("heimdall.udp")

_hotpath: ModuleType | None
try:  # the C hot path (heimdall/_hotpath.c), built by `pip install`; optional
    _hotpath = importlib.import_module("heimdall._hotpath")
except ImportError:  # pragma: no cover - no compiler at install time
    _hotpath = None


def hot_path_built() -> bool:
    """True when the C hot path (heimdall/_hotpath.c) was compiled at install time."""
    return _hotpath is not None


def hot_path_in_use(config: Config) -> str:
    """"c" when UDP cache hits are answered by heimdall/_hotpath.c (see UdpListener.reader), else "python"."""
    return "c" if config.hot_path != "python" and not config.query_log and _hotpath is not None else "python"


class UdpListener:
    def __init__(self, sock: socket.socket, pipeline: Pipeline, config: Config):
        self.sock = sock
        self.pipeline = pipeline
        self.config = config
        self.counters = pipeline.counters

    def reader(self) -> Callable[[], None]:
        """The loop's readable callback: the C hot path where it can serve, else the Python twin.

        With the query log on (`pipeline.fast_path` False) every query must
        reach the observers, so the Python reader serves and answers no hit itself.
        """
        p = self.pipeline
        mode = self.config.hot_path
        if mode != "python" and p.fast_path and _hotpath is not None:
            return _hotpath.HotPath(self.sock.fileno(), p.cache.map, self.counters.hit_labels, self.counters,
                                    self.slow_guarded, p.time_hits, p.admit, self.limited)
        if mode == "c" and _hotpath is not None:
            log.warning("HEIMDALL_HOT_PATH=c: the query log is on, so UDP uses the Python reader")
        return PyHotPath(self.sock, p.cache.map, self.counters, self.slow_guarded, p.time_hits, p.admit,
                         self.limited, fast=p.fast_path, batch=self.config.udp_batch)

    def slow_guarded(self, data: bytes, addr: tuple, now: int) -> None:
        try:
            self.slow(data, addr, now)
        except Exception as exc:  # noqa: BLE001 - a packet must never kill the worker
            self.counters.internal_errors += 1
            if self.counters.internal_errors <= 10:
                log.error(f"internal error on a UDP query: {exc!r}")

    def slow(self, data: bytes, addr: tuple, now: int) -> None:
        self.counters.queries_udp += 1
        self.pipeline.dispatch(data, now, Transport.UDP, addr, self.sendto)

    def limited(self, data: bytes, addr: tuple) -> None:
        """A datagram the rate limit turned down: REFUSED or dropped."""
        reply = self.pipeline.limited(data)
        if reply is not None:
            self.sendto(reply, addr)

    def sendto(self, reply: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(reply, addr)
        except OSError:
            pass
