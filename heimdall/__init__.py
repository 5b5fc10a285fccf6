"""Heimdall: a caching, blocking, forwarding DNS server on uvloop."""

__version__ = "0.1.0"
