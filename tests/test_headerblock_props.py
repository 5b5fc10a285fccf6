"""Property tests of the DoH header-block decoding against the hpack library, its reference.

heimdall/hpack.c decodes HPACK's Huffman code and splits a block into its
fields in C, and heimdall/headerblock.py decodes a literal with a static name
itself (a GET's :path, new with every request): on any bytes, valid or not,
each must say what its twin says (hpack, or py_neutral_fields), or refuse
where it refuses. scripts/asan.sh runs this file under the sanitizers too.
"""

from __future__ import annotations

import os

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from heimdall import headerblock, wire
from heimdall.headerblock import BadHeaderBlock, HeaderBlocks, hpack_int, request_of

PROPS = settings(max_examples=int(os.environ.get("HEIMDALL_PROP_EXAMPLES", "400")), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
ENCODE = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode
STATIC_NAMES = [name for name, _ in headerblock.STATIC_TABLE]


def hpack_says(fn, *args):
    """What a call returns, or "refused" when it raises hpack's or our decoding errors."""
    try:
        return fn(*args)
    except (hpack.HPACKError, ValueError, BadHeaderBlock):
        return "refused"


def test_the_c_walks_are_the_ones_used_when_built():
    if wire.c_ext is None:
        pytest.skip("the C extension is not built")
    assert headerblock.huffman_decode is wire.c_ext.huffman_decode
    assert headerblock.neutral_fields is wire.c_ext.neutral_fields


@PROPS
@given(st.binary(max_size=80))
@example(b"\x7f\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")  # a name index past 2^63
@example(b"\x00\x7f\xff\xff\xff\xff\xff\xff\xff\xff\x7f")      # a name length past any block
@example(b"\x0f\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00\x00")  # an index of zeros, 9 bytes long
@example(b"\x00\x01")                                            # ends inside the name
def test_splitting_any_bytes_into_fields_agrees_with_the_twin(block):
    assert headerblock.neutral_fields(block) == headerblock.py_neutral_fields(block)


@PROPS
@given(st.binary(max_size=300))
def test_huffman_round_trip(data):
    assert headerblock.huffman_decode(ENCODE(data)) == data


@PROPS
@given(st.binary(max_size=40))
@example(b"\xff\xff\xff\xff")      # EOS: refused
@example(b"\x00")                  # '0' then padding of 0s: refused
@example(b"\x1f")                  # '0' then 3 bits of 1s: the padding
@example(b"\xfe\x3f\xff")          # a symbol, then padding longer than 7 bits
def test_huffman_of_any_bytes_agrees_with_hpack(data):
    assert hpack_says(headerblock.huffman_decode, data) == hpack_says(decode_huffman, data)


HEADER_VALUE = st.binary(max_size=120)
FIELD = st.tuples(st.sampled_from(STATIC_NAMES + [b"x-custom", b"accept"]), HEADER_VALUE, st.booleans(),
                  st.booleans())


@PROPS
@given(st.lists(FIELD, max_size=6), st.sampled_from([b"GET", b"POST", b"HEAD"]), HEADER_VALUE)
def test_blocks_that_leave_the_table_alone_decode_as_hpack_decodes_them(fields, method, path):
    """Literals never indexed (huffman or not) and static indexed fields, as an HTTP/2 client sends
    a GET's :path: our decoding of the request is hpack's."""
    headers = [NeverIndexedHeaderTuple(b":method", method), NeverIndexedHeaderTuple(b":path", path)]
    headers += [NeverIndexedHeaderTuple(n, v) if never else HeaderTuple(n, v) for n, v, never, _ in fields]
    huffman = any(h for *_, h in fields)
    block = hpack.Encoder().encode(headers, huffman=huffman)
    assert headerblock.neutral_fields(block) == headerblock.py_neutral_fields(block)
    theirs = hpack_says(lambda b: request_of(hpack.Decoder(max_header_list_size=headerblock.MAX_HEADERS)
                                             .decode(b, raw=True)), block)
    ours = hpack_says(HeaderBlocks().decode, block)
    assert ours == theirs


@PROPS
@given(st.integers(min_value=0, max_value=70), st.booleans(), st.binary(max_size=60),
       st.sampled_from([b"", b"\x82", b"\x84\x87"]))
def test_a_literal_field_of_any_bytes_decodes_as_hpack_decodes_it(index, huffman, value, indexed):
    """A literal without indexing (its own name, a static one, or one past the static table), its
    value any bytes, Huffman-coded or not."""
    block = hpack_int(index, 4) + (b"\x01n" if index == 0 else b"") + hpack_int(len(value), 7, 0x80 if huffman else 0)
    block += value + indexed
    fields = headerblock.neutral_fields(block)
    assert fields is not None
    theirs = hpack_says(lambda b: [(bytes(n), bytes(v)) for n, v in hpack.Decoder().decode(b, raw=True)], block)
    ours = hpack_says(lambda fs: [HeaderBlocks().field(f) for f in fs], fields)
    assert ours == theirs


OTHER_FIELDS = st.sampled_from([
    b"\x82", b"\x83", b"\x87",  # :method GET, :method POST, :scheme https (static, indexed)
    b"\x84",  # :path / (static, indexed): a second :path in the block
    b"\xbe",  # the dynamic table's newest entry (refused while the table is empty)
    b"\x41\x09127.0.0.1",  # :authority, indexed into the table: the table changes
    b"\x0f\x10\x17application/dns-message",  # content-type, a literal not indexed
    b"\x00\x01x\x01y",  # a literal with its own name, not indexed
])


def path_field(never: bool, huffman: bool, value: bytes) -> bytes:
    coded = ENCODE(value) if huffman else value
    return bytes([0x14 if never else 0x04]) + hpack_int(len(coded), 7, 0x80 if huffman else 0) + coded


@PROPS
@given(st.lists(st.tuples(st.lists(OTHER_FIELDS, max_size=5), st.integers(min_value=0, max_value=5)),
                min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(min_value=0, max_value=2), st.booleans(), st.booleans(),
                          st.binary(max_size=24) | st.binary(min_size=120, max_size=160)
                          | st.just(b"/dns-query?dns=AAABAAABAAAAAAAAA3d3dwAAAQAB")),
                min_size=1, max_size=12))
def test_blocks_around_a_new_path_decode_as_hpack_decodes_them(shapes, requests):
    """A client's requests as DoH clients send them: the same fields around a :path that is new each
    time (a literal, Huffman or not), the shape changing now and then, the table too: every block
    decodes to the request hpack decodes it to, or is refused as hpack refuses it."""
    ours, reference = HeaderBlocks(), hpack.Decoder(max_header_list_size=headerblock.MAX_HEADERS)
    for shape, never, huffman, value in requests:
        others, at = shapes[shape % len(shapes)]
        at = min(at, len(others))
        block = b"".join(others[:at]) + path_field(never, huffman, value) + b"".join(others[at:])
        theirs = hpack_says(lambda b: request_of(reference.decode(b, raw=True)), block)
        assert hpack_says(ours.decode, block) == theirs
        if theirs == "refused":
            return  # the connection's HPACK state is lost (COMPRESSION_ERROR): nothing follows
