"""The transport a query came on: what the pipeline and its observers are told with each query.

UDP is the falsy member, so `if transport:` keeps meaning "a stream": no
truncation, answers up to 65535 bytes, the stream's cache keys. The C hot
path serves UDP only and never sees this value.
"""

from __future__ import annotations

from enum import IntEnum


class Transport(IntEnum):
    UDP = 0
    TCP = 1
    DOT = 2  # DNS over TLS (RFC 7858)
    DOH = 3  # DNS over HTTPS (RFC 8484)
    DOQ = 4  # DNS over QUIC (RFC 9250)

    @property
    def label(self) -> str:
        """The `protocol` label of metrics and the query log."""
        return LABELS[self]


LABELS = ("udp", "tcp", "dot", "doh", "doq")


def label(transport: int) -> str:
    """The label of a transport given as a Transport (or a plain bool: True is TCP)."""
    return LABELS[int(transport)]
