"""Property tests of what a DoH request carries and what its reply says (heimdall/dohrequest.py).

The `dns` parameter is decoded strictly by binascii with base64url's alphabet
mapped onto base64's: on any text it must decide as RFC 4648 base64url (by the
standard library's decoder, after a check of its alphabet) decides. A reply's
headers are kept by the reply's bytes after the ID: they must be what the
reply itself says, whatever was asked before it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct

import dns.message
import dns.rrset
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from heimdall.dohrequest import AnswerHeaders, Refusal, any_message, decode_base64url, dns_message, max_age

PROPS = settings(max_examples=int(os.environ.get("HEIMDALL_PROP_EXAMPLES", "400")), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
BASE64URL = re.compile(rb"[A-Za-z0-9_-]*=*")


def reference(text: bytes) -> bytes | None:
    """base64url as RFC 4648 section 5 has it, unpadded or padded."""
    if not BASE64URL.fullmatch(text):
        return None
    text = text.rstrip(b"=")
    try:
        return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ \n.%\x00\xe9",
               max_size=40).map(lambda t: t.encode("latin-1"))


@PROPS
@given(st.one_of(TEXT, st.binary(max_size=40), st.binary(max_size=60).map(base64.urlsafe_b64encode)))
@example(b"AAAB+AAA")     # base64's own alphabet is not base64url's
@example(b"AA=A")         # padding in the middle
@example(b"A")            # one character past a whole group
@example(b"AAAAAA==")     # padded
@example(b"AAB")          # trailing bits that are not zero
def test_the_dns_parameter_decodes_as_base64url_says(text):
    assert decode_base64url(text) == reference(text)


def test_a_get_with_other_parameters_finds_its_dns_one():
    query = dns.message.make_query("w1.bench.test", "A").to_wire()
    encoded = base64.urlsafe_b64encode(query).rstrip(b"=")
    assert dns_message(b"GET", b"/dns-query?dns=" + encoded, None, b"") == query
    assert dns_message(b"GET", b"/dns-query?ct=x&dns=" + encoded, None, b"") == query
    assert isinstance(dns_message(b"GET", b"/dns-query?dns=" + encoded + b"&dns=" + encoded, None, b""), Refusal)


@PROPS
@given(st.sampled_from([b"/dns-query?dns=", b"/dns-query?", b"/dns-query", b"/dns-query?dns", b"/x?dns=", b""]),
       st.one_of(TEXT, st.binary(max_size=60).map(base64.urlsafe_b64encode),
                 st.integers(min_value=65530, max_value=65540).map(lambda n: base64.urlsafe_b64encode(bytes(n)))),
       st.sampled_from([b"", b"&dns=AAAB", b"&", b"&x=1", b"?dns=AAAA"]))
def test_a_get_is_read_in_short_as_any_request_is_read(head, text, tail):
    """What a GET asks (a message, or the status saying why not) is the same read in short as in full."""
    target = head + text + tail
    assert dns_message(b"GET", target, None, b"") == any_message(b"GET", target, None, b"")


def reply(name: str, ttl: int, qid: int) -> bytes:
    msg = dns.message.make_response(dns.message.make_query(name, "A"))
    msg.id = qid
    msg.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "192.0.2.1"))
    return msg.to_wire()


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["a.test.", "bb.test.", "c.test."]), st.integers(0, 2**31 - 1),
                          st.integers(0, 65535)), min_size=1, max_size=20))
def test_kept_reply_headers_are_what_each_reply_says(replies):
    heads = AnswerHeaders()
    for name, ttl, qid in replies:
        wire = reply(name, ttl, qid)
        got = dict(heads(wire))
        assert got[b"content-length"] == str(len(wire)).encode()
        assert got[b"cache-control"] == f"max-age={ttl}".encode() == f"max-age={max_age(wire)}".encode()
        assert got[b"content-type"] == b"application/dns-message"
        assert struct.unpack("!H", wire[:2])[0] == qid
