"""DNS over HTTPS (RFC 8484) to one upstream: many queries as streams of one HTTP/2 connection.

heimdall/http2client.py turns queries into frames and frames into replies
(sans-IO, as h2 would, but for this one shape of exchange), and we move the
bytes over the same asyncio TLS connections as DNS over TLS
(heimdall/streamupstream.py), so DoH needs no HTTP framework or event loop of
its own. Each query is a POST of `application/dns-message`; the answer is the
stream's body. RFC 8484 suggests ID 0 for HTTP caches, but no cache sits
between us and the upstream, so the ID stays random and the reply must still
match ID and question. A non-200 status, a reset stream or a broken HTTP/2
session is an upstream failure (failover). A GOAWAY closes the connection to
new queries; those the server took are still answered on it, and those it
did not take (like those it refuses) are asked once more on another
connection (StreamPool), as are the queries that follow.
"""

from __future__ import annotations

from typing import Callable

from heimdall.http2client import Http2Client, NoStream
from heimdall.streamupstream import MAX_INFLIGHT, Connection, StreamError, Untaken
from heimdall.upstreamurl import UpstreamUrl


class Http2(Connection):
    """One HTTP/2 connection; queries are its streams, answered in any order."""

    def __init__(self, addr: UpstreamUrl, on_lost: Callable[[Connection], None],
                 refused: Callable[[Connection, str], None]) -> None:
        super().__init__(addr, on_lost)
        self.refused = refused  # the peer would not speak HTTP/2: a failed connection attempt
        authority = addr.verify_name if ":" not in addr.verify_name else f"[{addr.verify_name}]"
        authority = authority if addr.port == 443 else f"{authority}:{addr.port}"
        self.h2 = Http2Client(authority.encode(), addr.path.encode(), self.deliver, self._stream_failed,
                              self._abandon)
        self.by_qid: dict[int, int] = {}

    def usable(self) -> bool:
        return super().usable() and not self.h2.goaway and self.load < min(MAX_INFLIGHT, self.h2.max_streams)

    def started(self) -> None:
        assert self.transport is not None
        tls = self.transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        if alpn != "h2":
            self.refused(self, f"the server did not agree to HTTP/2 (ALPN {alpn or 'none'})")
            return
        self.flush()  # the preface

    def write(self, qid: int, message: bytes) -> None:
        try:
            self.by_qid[qid] = self.h2.request(qid, message)
        except NoStream as exc:
            self._abandon(f"no new HTTP/2 stream: {exc}")
            raise StreamError(f"no new HTTP/2 stream to {self.addr}") from None
        self.flush_soon()

    def done(self, qid: int) -> None:
        sid = self.by_qid.pop(qid, None)
        if sid is not None and not self.closed and self.h2.cancel(sid):
            self.flush()  # still open: we gave up on it (timeout), the server may stop working on it
        super().done(qid)
        self._close_if_drained()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.h2.receive(data)
        self.flush()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        """After the server's GOAWAY, the connection closes once the streams it took are over."""
        if self.h2.goaway and not self.waiting and not self.closed:
            self.close()

    def _stream_failed(self, qid: int, reason: str, untaken: bool) -> None:
        self.fail_query(qid, f"{self.addr} {reason}", Untaken if untaken else StreamError)

    def _abandon(self, reason: str) -> None:
        """No new streams here; every query waiting fails over; the connection closes."""
        self.closed = True
        self.fail(f"{self.addr}: {reason}")
        if self.transport is not None:
            self.flush()
            self.transport.close()
