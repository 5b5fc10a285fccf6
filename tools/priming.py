"""Priming: ask each warm-set question once, retrying the unanswered, so a cache is warm before a window."""

from __future__ import annotations

import select
import socket
import time

from tools.scenarios import HEADER_TAIL


def prime(family: int, sockaddr: tuple, questions: list[bytes], timeout_s: float,
          rounds: int = 3, window: int = 100) -> dict:
    """Ask each question once (retrying the unanswered) so the cache is warm before the window."""
    todo = list(dict.fromkeys(questions))
    answered = 0
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)
        s.setblocking(False)
        for _ in range(rounds):
            if not todo:
                break
            got = _prime_round(s, todo, timeout_s, window)
            answered += len(got)
            if not got:
                break
            todo = [q for i, q in enumerate(todo) if i not in got]
    return {"questions": len(set(questions)), "answered": answered}


def _prime_round(s: socket.socket, todo: list[bytes], timeout_s: float, window: int) -> set[int]:
    got: set[int] = set()
    inflight: dict[int, float] = {}
    nxt = lost = 0
    deadline_all = time.monotonic() + timeout_s * 3 + len(todo) / 2000
    while (nxt < len(todo) or inflight) and time.monotonic() < deadline_all:
        while nxt < len(todo) and len(inflight) < window:
            try:
                s.send((nxt & 0xFFFF).to_bytes(2, "big") + HEADER_TAIL + todo[nxt])
            except OSError:
                pass
            inflight[nxt] = time.monotonic()
            nxt += 1
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            while True:
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                qid = int.from_bytes(data[:2], "big")
                for i in [i for i in inflight if i & 0xFFFF == qid]:
                    del inflight[i]
                    got.add(i)
        now = time.monotonic()
        for i in [i for i, t in inflight.items() if now - t > timeout_s]:
            del inflight[i]
            lost += 1
        if lost >= window and not got:
            break  # a whole window unanswered: the server is not there, the run will say so
    return got
