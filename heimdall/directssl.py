"""TLS objects whose per-record methods are the ssl module's C methods themselves.

The event loop (uvloop's TLS layer, asyncio's too) binds an SSLObject's read,
write and pending once per connection and calls them for every TLS record; the
standard class wraps each in a Python method that only passes its arguments on.
A context with `sslobject_class = DirectSSLObject` makes objects without that
layer, for the listeners and the upstream connections alike.
"""

from __future__ import annotations

import ssl
from typing import Any


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose read, write and pending are the C methods themselves. The event loop
    binds them once per connection and calls them for every TLS record, where the standard class
    adds a Python call around each (they take the same arguments and do nothing else)."""

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:  # ssl.SSLContext.wrap_bio's constructor
        self = super()._create(*args, **kwargs)  # type: ignore[misc]
        tls = self._sslobj
        self.read, self.write, self.pending = tls.read, tls.write, tls.pending
        return self
