"""Operator actions that act on every worker: pause blocking, flush the cache, refresh the lists.

A list refresh first downloads the list URLs in the worker serving the API
(which is the one that downloads them, heimdall/blocking.py), then every
worker reloads its lists from the files and saved copies.

The HTTP API runs in one worker. With several, the others learn of an action
through `control.json` in the directory where workers publish their figures
(heimdall/metrics.py: SnapshotStore), replaced atomically. Each worker looks
at it four times a second, applies what changed and writes the generation it
applied to `ack-<pid>.json`; the API answers once every live worker has
acknowledged, so "flushed" means flushed everywhere. With one process the API
applies the action itself. A pause is a wall-clock deadline, so every worker
resumes blocking at the same moment, also one restarted meanwhile. A pause
covers every client group, or one (`?group=NAME`; "default" is the clients in
no group).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, Sequence

from heimdall.atomic import atomic_write_bytes
from heimdall.metrics import SnapshotStore

if TYPE_CHECKING:
    from heimdall.cache import Cache
    from heimdall.fleet import Fleet

POLL_INTERVAL = 0.25
ACK_TIMEOUT = 5.0


def until_json(until: float) -> float | None:
    return None if math.isinf(until) else until


def until_value(until: float | None) -> float:
    return math.inf if until is None else float(until)


@dataclass(frozen=True)
class ControlState:
    generation: int = 0
    blocking_disabled_until: float = 0.0  # epoch seconds; math.inf: until enabled again; 0: enabled
    flush: int = 0    # generation of the last cache flush
    refresh: int = 0  # generation of the last list refresh
    groups_disabled_until: dict[str, float] = field(default_factory=dict)  # one client group's pause

    def blocking_enabled(self, now: float, group: str | None = None) -> bool:
        """Whether blocking is on (for `group`: neither every group's pause nor its own is in force)."""
        return self.blocking_disabled_until <= now and (
            group is None or self.groups_disabled_until.get(group, 0.0) <= now)

    def group_until(self, group: str) -> float:
        return max(self.blocking_disabled_until, self.groups_disabled_until.get(group, 0.0))

    def to_json(self) -> dict:
        return {"generation": self.generation, "blocking_disabled_until": until_json(self.blocking_disabled_until),
                "flush": self.flush, "refresh": self.refresh,
                "groups_disabled_until": {g: until_json(u) for g, u in self.groups_disabled_until.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "ControlState":
        groups = {str(g): until_value(u) for g, u in (d.get("groups_disabled_until") or {}).items()}
        return cls(int(d["generation"]), until_value(d.get("blocking_disabled_until", 0.0)), int(d["flush"]),
                   int(d["refresh"]), groups)


class Lists(Protocol):
    """What the control API switches: a blocking stage, or every client group's (clientgroups.py)."""

    def request_reload(self) -> None: ...

    def pause(self, paused: Callable[[str], bool]) -> None:
        """Pause the stage of each group that `paused(group name)` names; resume the others."""


class WorkerControl:
    """One worker's side: applies a state to its blocking stage and cache."""

    def __init__(self, blocking: Lists | None, cache: "Cache") -> None:
        self.blocking = blocking
        self.cache = cache
        self.applied = ControlState()

    def apply(self, state: ControlState, now: float) -> None:
        if state.flush != self.applied.flush:
            self.cache.clear()
        if self.blocking is not None:
            if state.refresh != self.applied.refresh:
                self.blocking.request_reload()
        self.applied = state
        self.tick(now)

    def acknowledge(self, directory: str) -> None:
        atomic_write_bytes(os.path.join(directory, f"ack-{os.getpid()}.json"),
                           json.dumps({"generation": self.applied.generation}).encode())

    def tick(self, now: float) -> None:
        """A pause ends on time even when nothing else changes."""
        if self.blocking is not None:
            state = self.applied
            self.blocking.pause(lambda group: not state.blocking_enabled(now, group))

    async def follow(self, directory: str | None) -> None:
        """Run as a task in each worker: end a pause on time and, under a supervisor (`directory`
        is where the workers publish), apply control.json whenever it changes."""
        seen = 0
        if directory:
            self.acknowledge(directory)
        while True:
            if directory:
                seen = self.check_file(directory, seen)
            self.tick(time.time())
            await asyncio.sleep(POLL_INTERVAL)

    def check_file(self, directory: str, seen: int) -> int:
        """Apply and acknowledge control.json if it changed since `seen` (an mtime); its mtime now."""
        path = os.path.join(directory, "control.json")
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return 0
        if mtime != seen:
            state = read_state(path)
            if state.generation != self.applied.generation:
                self.apply(state, time.time())
                self.acknowledge(directory)
        return mtime


def read_state(path: str) -> ControlState:
    try:
        with open(path) as f:
            return ControlState.from_json(json.load(f))
    except FileNotFoundError:
        return ControlState()


class Controller:
    """The API's side: change the state, make every worker apply it, report."""

    def __init__(self, local: WorkerControl, store: SnapshotStore | None,
                 fetch_lists: "Callable[[], Awaitable[dict[str, str]]] | None" = None,
                 groups: Callable[[], Sequence[str]] = lambda: (), fleet: "Fleet | None" = None) -> None:
        self.local = local  # this worker's (it serves the API)
        self.store = store
        self.fetch_lists = fetch_lists  # downloads the list URLs before a refresh (url -> result)
        self.groups = groups  # the client groups' names as configured now, "default" first
        self.fleet = fleet  # other instances sharing Redis, told of flushes and list refreshes
        self.state = read_state(self.path) if store else ControlState()

    @property
    def path(self) -> str:
        assert self.store is not None
        return os.path.join(self.store.directory, "control.json")

    async def change(self, **changes: Any) -> tuple[ControlState, int, int]:
        """Apply `changes` everywhere: (new state, workers that acknowledged, live workers)."""
        state = replace(self.state, generation=self.state.generation + 1, **changes)
        self.state = state
        self.local.apply(state, time.time())
        if self.store is None:
            return state, 1, 1
        atomic_write_bytes(self.path, json.dumps(state.to_json()).encode())
        self.local.acknowledge(self.store.directory)
        deadline = time.monotonic() + ACK_TIMEOUT
        while True:
            acked, live = self.acknowledged(state.generation)
            if acked >= live or time.monotonic() > deadline:
                return state, acked, live
            await asyncio.sleep(0.05)

    def acknowledged(self, generation: int) -> tuple[int, int]:
        assert self.store is not None
        pids = [s.pid for s in self.store.read()]
        acked = sum(1 for pid in pids if ack_of(self.store.directory, pid) >= generation)
        return acked, len(pids)

    def status(self, now: Callable[[], float] = time.time) -> dict:
        """Blocking for every client (enabled: no pause covers them all), then for each group."""
        t, state = now(), self.state
        doc = pause_status(state.blocking_enabled(t), state.blocking_disabled_until, t)
        doc["groups"] = {g: pause_status(state.blocking_enabled(t, g), state.group_until(g), t) for g in self.groups()}
        return doc

    def pause_changes(self, group: str | None, until: float) -> dict[str, Any]:
        """The state change that pauses (until > now) or resumes (until 0) every group, or `group`;
        ValueError for a group that is not configured."""
        if group is None:
            return {"blocking_disabled_until": until, "groups_disabled_until": {}}
        if group not in self.groups():
            raise ValueError(f"no client group {group!r} (groups: {', '.join(self.groups())})")
        groups = {g: u for g, u in self.state.groups_disabled_until.items() if g != group}
        if until:
            groups[group] = until
        return {"groups_disabled_until": groups}


def pause_status(enabled: bool, until: float, now: float) -> dict:
    return {"enabled": enabled, "disabled_until": None if enabled or math.isinf(until) else until,
            "remaining_s": None if enabled or math.isinf(until) else round(until - now, 1)}


def ack_of(directory: str, pid: int) -> int:
    try:
        with open(os.path.join(directory, f"ack-{pid}.json")) as f:
            return int(json.load(f)["generation"])
    except (FileNotFoundError, ValueError, KeyError):
        return -1
