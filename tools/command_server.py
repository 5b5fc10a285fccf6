"""A server the lab starts from the command line a user gives (`--server ADDR -- COMMAND...`).

What lets `baseline create` and `check` measure any DNS server as they measure
Heimdall: started in a session of its own (so stopping it stops everything it
started), ready when it answers a real query at ADDR, and startable again under
a wrapper (valgrind, for tools/instructions.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field

from tools.errors import EXIT_ENVIRONMENT, ToolError
from tools.lab_adapter import ZONE, split_server
from tools.peers import stop_session


@dataclass
class CommandServer:
    """A server given by its command line (`-- COMMAND...`) and the address it answers on: the lab
    starts it in a session of its own, waits for an answer, and stops the whole session."""

    argv: list[str]
    address: str
    env: dict[str, str] = field(default_factory=dict)   # over this process's environment
    start_timeout: float = 15.0
    proc: subprocess.Popen | None = None

    def start(self) -> "CommandServer":
        from tools.nsd import wait_for_dns

        host, port = split_server(self.address)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         env={**os.environ, **self.env}, start_new_session=True)
        except OSError as exc:
            raise ToolError(f"cannot start {self.argv[0]}: {exc.strerror or exc}", EXIT_ENVIRONMENT) from None
        try:
            wait_for_dns(host, port, f"ping.{ZONE}.", timeout=self.start_timeout, proc=self.proc)
        except ToolError as exc:
            self.stop()
            raise ToolError(f"{shlex.join(self.argv)}: {exc}", EXIT_ENVIRONMENT) from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def describe(self) -> dict:
        return {"kind": "command (started by the lab)", "server": self.address, "pid": self.pid,
                "command": shlex.join(self.argv)}

    def stop(self) -> None:
        if self.proc is not None:
            stop_session(self.proc)
