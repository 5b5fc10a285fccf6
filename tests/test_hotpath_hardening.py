"""The C reader (heimdall/_hotpath.c) against bad internal state, not only bad packets.

tests/test_hotpath.py holds the reader to the Python model for any datagram.
Here its other inputs go wrong: what the cache holds (objects that are not an
Entry, or whose fields are out of range), the label list, hooks that call
back into the reader, a full send buffer, datagrams longer than a slot, and an
object whose __init__ never ran. A case that crashed the interpreter runs in a
child process (`isolated`), so that a crash fails one test, not the suite.
scripts/asan.sh runs this file against a build with AddressSanitizer and UBSan.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap

import dns.message
import pytest
from hotpath_rig import NAMES, Rig, make_query

from heimdall import udp, wire
from heimdall.cache import Entry

pytestmark = pytest.mark.skipif(not udp.hot_path_built(), reason="C hot path not built (no compiler)")

FIELDS = ("head", "tail", "qend", "aged", "lid")


@pytest.fixture()
def rig():
    r = Rig()
    yield r
    r.close()


def same(reply: bytes, expected: bytes | None) -> bool:
    """The same message, TTLs aside (a second may tick between the reader's reply and the model's)."""
    return expected is not None and dns.message.from_wire(reply) == dns.message.from_wire(expected)


def isolated(body: str, env: dict[str, str] | None = None) -> str:
    """Run `body` in a fresh interpreter that imports what this one does; its stdout.

    The child sees this process's sys.path first, so under scripts/asan.sh it
    loads the sanitized extension too. A crash (a signal) fails with the child's stderr.
    """
    code = f"import sys\nsys.path[:0] = {sys.path!r}\n" + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env if env is not None else dict(os.environ))
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout


class Mimic:
    """Not an Entry, but holding Entry's own slot descriptors, over slots of its own at the same offsets."""

    __slots__ = tuple(f"x{i}" for i in range(len(Entry.__slots__)))
    head, tail, qend, aged, lid = (Entry.__dict__[f] for f in FIELDS)

    def refresh(self, now: int) -> bool:
        return True


class SubEntry(Entry):
    __slots__ = ()


def forged(query: bytes, rig: Rig) -> Mimic:
    """A Mimic whose slots hold, where Entry keeps its fields (slots are laid out by sorted name), a forged reply."""
    m = Mimic()
    order = sorted(Entry.__slots__)
    for name, value in (("head", b"\x81\x80" + query[4:12]), ("tail", b"FORGED"), ("qend", len(query)),
                        ("aged", rig.now), ("lid", 0)):
        setattr(m, f"x{order.index(name)}", value)
    return m


@pytest.mark.parametrize("kind", ["mimic", "subclass"])
def test_only_an_exact_entry_is_served(rig, kind):
    q = make_query(NAMES[0])
    key = q[2:].lower()
    e = rig.srv.cache.map[key]
    if kind == "mimic":
        rig.srv.cache.map[key] = forged(q, rig)
    else:
        sub = SubEntry(e.head, e.tail, e.qend, rig.now, 300, e.offsets, e.lid)
        rig.srv.cache.map[key] = sub
    assert rig.exchange([q]) == []
    assert [d for d, _ in rig.slow] == [q]


def test_construction_refuses_an_entry_class_whose_descriptors_are_not_its_own(rig, monkeypatch):
    monkeypatch.setattr("heimdall.cache.Entry", Mimic)
    with pytest.raises(TypeError, match="__slots__ member"):
        rig.srv.udp_listener.reader()


def test_a_class_with_entrys_descriptors_but_no_room_for_them_is_not_read():
    out = isolated("""
        from hotpath_rig import Rig, NAMES, make_query
        from heimdall.cache import Entry

        class Tiny:  # 16 bytes: Entry's offsets point past its end
            __slots__ = ()
            head, tail, qend, aged, lid = (Entry.__dict__[f] for f in ("head", "tail", "qend", "aged", "lid"))

            def refresh(self, now):
                return True

        r = Rig()
        q = make_query(NAMES[0])
        pool = [Tiny() for _ in range(1000)]
        r.srv.cache.map[q[2:].lower()] = pool[500]
        print(len(r.exchange([q])), len(r.slow))
    """)
    assert out.split() == ["0", "1"]


def test_a_new_class_at_a_dead_classs_address_is_not_read_with_the_old_offsets():
    # The case needs the allocator to hand the dead class's block straight back: under
    # scripts/asan.sh, AddressSanitizer's quarantine of freed blocks is turned off for it.
    asan = os.environ.get("ASAN_OPTIONS")
    env = dict(os.environ, ASAN_OPTIONS=f"{asan}:quarantine_size_mb=0:thread_local_quarantine_size_kb=0") if asan else None
    out = isolated("""
        import gc
        from hotpath_rig import Rig, NAMES, make_query

        def cls(slots):
            return type("Item", (), {"__slots__": slots, "refresh": lambda self, now: True})

        def item(kind, **fields):
            it = kind()
            for name, value in fields.items():
                setattr(it, name, value)
            return it

        r = Rig()
        q = make_query(NAMES[0])
        key = q[2:].lower()
        e = r.srv.cache.map[key]
        keep = []

        def reused():  # a dead class the reader has seen, and a new class at its address (or None)
            old = cls(("head", "tail", "qend", "aged", "lid"))  # laid out by sorted name: aged, head, lid, qend, tail
            address = id(old)
            r.srv.cache.map[key] = item(old, head=e.head, tail=e.tail, qend=e.qend, aged=r.now, lid=e.lid)
            r.exchange([q])  # the old reader learned this class's offsets here
            del r.srv.cache.map[key], old
            gc.collect()
            for _ in range(1000):  # until the allocator hands the dead class's block back
                new = cls(("b_aged", "c_tail", "d_lid", "e_qend", "f_head"))  # tail and head where old had head, tail
                if id(new) == address:
                    return new
                keep.append(new)
            return None

        # the allocator may hand the block to something else first (seen on 3.13): a few whole tries
        new = next((n for n in (reused() for _ in range(20)) if n is not None), None)
        if new is None:
            raise AssertionError("the allocator did not reuse the address")
        r.srv.cache.map[key] = item(new, b_aged=r.now, c_tail=e.tail, d_lid=e.lid, e_qend=e.qend, f_head=e.head)
        replies = r.exchange([q])
        print(all(reply[2:] == e.head + q[12:e.qend] + e.tail for reply in replies))
    """, env)
    assert out.split() == ["True"]


def test_no_python_code_runs_between_the_lookup_and_holding_the_entry():
    out = isolated("""
        from hotpath_rig import Rig, NAMES, make_query

        r = Rig()
        q = make_query(NAMES[0])
        key = q[2:].lower()

        class Meta(type):
            def __getattribute__(cls, name):
                if name in ("head", "tail", "qend", "aged", "lid") and r.srv.cache.map.pop(key, None) is not None:
                    print("ran")  # the entry's last reference is gone: the reader would hold a dangling one
                return type.__getattribute__(cls, name)

        class Evil(metaclass=Meta):
            __slots__ = ("head", "tail", "qend", "aged", "lid")

            def refresh(self, now):
                return True

        e, evil = r.srv.cache.map[key], Evil()
        evil.head, evil.tail, evil.qend, evil.aged, evil.lid = e.head, e.tail, e.qend, r.now, e.lid
        r.srv.cache.map[key] = evil
        del evil, e
        print(len(r.exchange([q])), len(r.slow))
    """)
    assert out.split() == ["0", "1"]


def test_an_emptied_label_list_is_not_read():
    out = isolated("""
        from hotpath_rig import Rig, NAMES, make_query
        r = Rig()
        r.srv.stats.hit_labels.clear()
        print(len(r.exchange([make_query(NAMES[0])])), r.srv.stats.hit_labels)
    """)
    assert out.split() == ["1", "[]"]


def test_a_label_beyond_a_c_long_is_added_to_like_python(rig):
    q = make_query(NAMES[0])
    lid = rig.srv.cache.map[q[2:].lower()].lid
    labels = rig.srv.stats.hit_labels
    labels[lid] = 2**70
    [reply] = rig.exchange([q])
    assert same(reply, rig.model(q))
    assert labels[lid] == 2**70 + 1


def test_a_label_that_is_not_a_number_is_reported_and_the_hit_still_served(rig, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))
    q = make_query(NAMES[0])
    lid = rig.srv.cache.map[q[2:].lower()].lid
    rig.srv.stats.hit_labels[lid] = None
    [reply] = rig.exchange([q])  # the old reader raised SystemError here, its error left pending
    assert same(reply, rig.model(q))
    assert reported == [TypeError]


def test_an_aged_second_beyond_a_c_long_is_re_aged_like_python(rig, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))
    q = make_query(NAMES[0])
    rig.srv.cache.map[q[2:].lower()].aged = 2**70
    replies = rig.exchange([q])
    assert len(replies) == 1 and same(replies[0], rig.model(q))
    assert rig.slow == [] and reported == []


@pytest.mark.parametrize("qend", [sys.maxsize, -sys.maxsize - 1, 11, 2**70])
def test_a_question_end_out_of_range_goes_to_the_slow_path(rig, qend):
    """Caught here by the range checks; that no size is computed from it first, only UBSan sees."""
    q = make_query(NAMES[0])
    rig.srv.cache.map[q[2:].lower()].qend = qend
    assert rig.exchange([q]) == []
    assert [d for d, _ in rig.slow] == [q]


def test_a_hook_that_re_enters_the_reader_is_refused_and_no_reply_goes_astray(rig):
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    late = make_query("other.hot.test")
    refused: list[str] = []
    listener = rig.srv.udp_listener
    args = (rig.srv.udp.fileno(), rig.srv.cache.map, rig.srv.stats.hit_labels, rig.srv.stats, listener.slow_guarded)

    def slow(data: bytes, addr: tuple, now: int) -> None:
        rig.slow.append((data, addr))
        if len(rig.slow) == 1:  # another client's miss arrives while the first batch is being served
            other.sendto(late, rig.dest)
            for reenter in (rig.read, lambda: rig.read.__init__(*args)):
                try:
                    reenter()
                except RuntimeError as exc:
                    refused.append(str(exc))

    listener.slow = slow
    hit, miss = make_query(NAMES[0]), make_query("miss.hot.test")
    try:
        replies = rig.exchange([hit, miss])
        strays = Rig.replies(other)
    finally:
        other.close()
    assert strays == []  # the old reader sent the first client's answer here
    assert len(replies) == 1 and same(replies[0], rig.model(hit))
    assert len(refused) == 2
    assert [d for d, _ in rig.slow] == [miss, late]  # read on the loop's next call


@pytest.mark.parametrize("qr", [False, True])
def test_a_datagram_longer_than_a_slot_is_answered_formerr_not_passed_on_cut(rig, qr):
    big = bytearray(make_query(NAMES[1]) + b"\x00" * 5000)
    if qr:
        big[2] |= wire.QR
    replies = rig.exchange([bytes(big)])
    assert rig.slow == []
    assert replies == ([] if qr else [wire.error_reply(bytes(big), wire.FORMERR)])
    assert (rig.srv.stats.formerr, rig.srv.stats.dropped) == ((0, 1) if qr else (1, 0))
    assert rig.srv.stats.udp_datagrams == 1


def test_an_uninitialised_reader_refuses_to_run():
    out = isolated("""
        from heimdall._hotpath import HotPath
        try:
            HotPath.__new__(HotPath)()
        except RuntimeError as exc:
            print("refused:", exc)
    """)
    assert out.startswith("refused:")


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

/* sendmmsg as the kernel would answer with a full socket buffer: counted, flags kept, errno injected. */
static int calls, last_flags = -1;

int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags)
{
    static int (*real)(int, struct mmsghdr *, unsigned int, int);
    const char *fail = getenv("SHIM_SENDMMSG_ERRNO");
    calls++;
    last_flags = flags;
    if (fail != NULL && *fail) {
        errno = atoi(fail);
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int, struct mmsghdr *, unsigned int, int))dlsym(RTLD_NEXT, "sendmmsg");
    return real(fd, v, n, flags);
}

int shim_calls(void) { return calls; }
int shim_flags(void) { return last_flags; }
"""


@pytest.fixture(scope="module")
def sendmmsg_shim(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the sendmmsg shim")
    d = tmp_path_factory.mktemp("shim")
    (d / "shim.c").write_text(SHIM)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(d / "shim.so"), str(d / "shim.c"), "-ldl"],
                   check=True, env=env)
    return str(d / "shim.so")


def test_a_full_send_buffer_drops_the_rest_of_the_batch_in_one_call(sendmmsg_shim):
    env = dict(os.environ, LD_PRELOAD=f"{os.environ.get('LD_PRELOAD', '')} {sendmmsg_shim}".strip())
    out = isolated("""
        import ctypes, errno, json, os
        from hotpath_rig import Rig, NAMES, make_query

        shim = ctypes.CDLL(None)
        seen = {}
        for name in ("EAGAIN", "ENOBUFS", "EPERM"):
            r = Rig()
            for i in range(10):
                r.client.sendto(make_query(NAMES[i % 8]), r.dest)
            os.environ["SHIM_SENDMMSG_ERRNO"] = str(getattr(errno, name))
            before = shim.shim_calls()
            r.read()
            del os.environ["SHIM_SENDMMSG_ERRNO"]
            seen[name] = [shim.shim_calls() - before, r.read.send_errors, len(r.replies(r.client))]
            r.close()
        r = Rig()
        seen["sent"] = len(r.exchange([make_query(NAMES[0])]))
        seen["flags"] = shim.shim_flags()
        print(json.dumps(seen))
    """, env)
    seen = json.loads(out)
    assert seen["EAGAIN"] == seen["ENOBUFS"] == [1, 10, 0]  # one failing call, all ten counted as dropped
    assert seen["EPERM"] == [10, 10, 0]  # an error of one reply's own: that reply dropped, the next tried
    assert seen["sent"] == 1 and seen["flags"] & socket.MSG_DONTWAIT


def _wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2.0)[0], "datagram did not arrive"


@pytest.mark.parametrize("size", [0, 1, 512, 65507])
def test_recv_burst_reads_waiting_datagrams_in_order_up_to_its_limit(size):
    """The upstream channels' reader (heimdall/channels.py): every size a UDP datagram can have, the
    limit honoured, the empty socket an empty list (no exception), the same as the Python fallback."""
    from heimdall import channels
    from heimdall._hotpath import recv_burst

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sent = [bytes([i]) * size for i in range(3)]
        for d in sent:
            tx.sendto(d, rx.getsockname())
        _wait_readable(rx)
        first = recv_burst(rx.fileno(), 2)
        rest = channels._py_recv_burst(rx.fileno(), 64)
        assert first + rest == sent and len(first) == 2
        assert recv_burst(rx.fileno(), 64) == [] and channels._py_recv_burst(rx.fileno(), 64) == []


def test_recv_burst_raises_a_pending_socket_error_only_before_the_first_datagram():
    from heimdall._hotpath import recv_burst

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        s.send(b"x")  # ICMP port unreachable comes back as a pending ECONNREFUSED
        _wait_readable(s)
        with pytest.raises(OSError) as err:
            recv_burst(s.fileno(), 64)
        assert err.value.errno == errno.ECONNREFUSED
        assert recv_burst(s.fileno(), 64) == []


@pytest.mark.parametrize("args", [(-1, 4), (0, 0), (0, 5000), (2**40, 4), ("3", 4), (3,)])
def test_recv_burst_refuses_bad_arguments(args):
    from heimdall._hotpath import recv_burst

    with pytest.raises((ValueError, TypeError, OverflowError)):
        recv_burst(*args)
