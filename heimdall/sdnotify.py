"""Service manager notifications (sd_notify(3)): READY, RELOADING, STOPPING, from the main process only.

systemd's `Type=notify` starts dependants when the server says READY=1, that
is when every worker listens, not when the process exists. The protocol is
one datagram of `KEY=value` lines to the AF_UNIX socket named by
NOTIFY_SOCKET (a leading `@` means the abstract namespace). The variable is
taken out of the environment when read, so forked workers do not speak for
the service (systemd's NotifyAccess=main would log each of their messages as
refused). Without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("heimdall.sdnotify")


class Notifier:
    def __init__(self, address: str | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_environment(cls) -> "Notifier":
        return cls(os.environ.pop("NOTIFY_SOCKET", None) or None)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:  # the service manager went away: serving goes on
            if not self._warned:
                self._warned = True
                log.warning(f"cannot notify the service manager at {self.address}: {exc.strerror or exc}")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading blocklists and logs")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing in-flight queries")
