"""Live progress of a load run on stderr (rich), fed from the processes' shared counters."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

PHASES = {0: "starting", 1: "warm-up", 2: "measuring", 3: "done"}


class LoadProgress:
    """A one-line live view: phase, elapsed, sent, received, current rate, timeouts. No-op when off."""

    def __init__(self, enabled: bool, cfg: Any, processes: int) -> None:
        self.enabled = enabled
        self.cfg = cfg
        self.processes = processes
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self.t0 = time.monotonic()
        self.last = (self.t0, 0)
        self.rate = 0.0
        self.notes: list[str] = []

    def __enter__(self) -> "LoadProgress":
        if self.enabled:
            self.live = Live(Text("starting load..."), console=self.console, refresh_per_second=4,
                             transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
        for n in self.notes:
            if self.enabled:
                self.console.print(f"[yellow]{n}[/]")

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def update(self, counters: list[int]) -> None:
        if self.live is None:
            return
        sent = sum(counters[0::4])
        received = sum(counters[1::4])
        timeouts = sum(counters[2::4])
        phase = PHASES.get(min(counters[3::4] or [0]), "?")
        now = time.monotonic()
        t_prev, r_prev = self.last
        if now - t_prev >= 0.5:
            self.rate = (received - r_prev) / (now - t_prev)
            self.last = (now, received)
        total = self.cfg.warmup + self.cfg.duration
        self.live.update(Text(
            f"{self.cfg.test_type} -> {self.cfg.server}  {phase}  {min(now - self.t0, total):5.1f}/{total:.1f}s  "
            f"sent {sent:,}  received {received:,}  {self.rate:,.0f} q/s  timeouts {timeouts:,}"
            + (f"  [{self.notes[-1]}]" if self.notes else "")))
