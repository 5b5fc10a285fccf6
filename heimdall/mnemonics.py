"""DNS types and rcodes by name, as logs and metric labels show them (dnspython knows the names)."""

from __future__ import annotations


def qtype_text(qtype: int) -> str:
    """A type's mnemonic for logs and metric labels; TYPEnnn (RFC 3597) when unknown."""
    import dns.rdatatype

    try:
        return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))
    except ValueError:
        return f"TYPE{qtype}"


def rcode_text(rcode: int) -> str:
    """An rcode's name for logs and metric labels; RCODEnnn when unknown."""
    import dns.rcode

    try:
        return dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
    except ValueError:
        return f"RCODE{rcode}"
