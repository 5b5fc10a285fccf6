"""What a pipeline stage returns: an answer and how it was made, a miss, or what a tier fetched.

Stages return these instead of setting flags, so that whoever sends the reply
also knows, without asking anyone, whether it was blocked, cached or resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from heimdall.cache import Entry
from heimdall.wire import Query


class How(IntEnum):
    """How a reply was made: what the observers count and log."""

    ERROR = 0  # screened out (FORMERR, NOTIMP, REFUSED, BADVERS) or refused under overload
    LOCAL = 1  # a policy stage answered without asking anyone (ANY, RFC 8482)
    BLOCKED = 2  # the blocking stage answered
    CACHED = 3  # a fresh cache entry
    RESOLVED = 4  # a miss: the shared tier or an upstream answered
    STALE = 5  # a miss nobody answered: an expired answer (RFC 8767)
    FAILED = 6  # a miss nobody answered: SERVFAIL

    @property
    def miss(self) -> bool:
        return self >= How.RESOLVED


@dataclass(slots=True)
class Answer:
    """A reply to send now. `ttl` > 0: the pipeline also caches it, so the hot path serves it next time."""

    reply: bytes
    how: How
    ttl: int = 0


@dataclass(slots=True)
class Miss:
    """A query the cache could not answer: its key, its parsed question, the size its reply must fit,
    and its question's bytes lower-cased (name, type, class: what the tiers ask for)."""

    key: bytes
    q: Query
    limit: int
    question: bytes


@dataclass(slots=True)
class Fetched:
    """What a tier found for a miss: the client's entry, its cache lifetime (-1: do not cache), the raw answer."""

    entry: Entry
    ttl: int
    response: bytes | None = None  # the upstream's message, for the tiers before it to learn
