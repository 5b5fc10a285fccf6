"""Each client to one worker: a classic BPF program picks the SO_REUSEPORT socket by client address.

By default the kernel spreads a port's datagrams over the workers' sockets by a
hash of source address *and port*, so a client that sprays from many ports
reaches every worker, and each worker's per-client rate limit lets it through
again: N workers, N times the rate. With rate limiting on, the workers attach
this program to their reuseport group (SO_ATTACH_REUSEPORT_CBPF): the socket
is picked by a hash of the source address alone (its /24 or /56 with
HEIMDALL_RATE_LIMIT_AGGREGATE, the limiter's own key), so a client's buckets
live in one worker whatever ports it uses. The program runs in the kernel per
packet (a few instructions); the workers' Python code is not involved.

One program serves the whole group, so every worker attaching the same one is
harmless. An index beyond the group (while a dead worker's replacement binds)
falls back to the kernel's own hash. Without rate limiting the program in place
returns no index at all, which is that same fallback: one busy client (a load
generator) is then spread over every worker.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51
NET = -0x100000  # SKF_NET_OFF: loads relative to the IP header, whatever the transport header
MIX = (0x85EBCA6B, 0xC2B2AE35)  # MurmurHash3's finalizer: neighbouring addresses land anywhere
NO_INDEX = 0xFFFFFFFF  # past every group: the kernel's own hash of address and port picks

# classic BPF opcodes (linux/filter.h)
LD_W, LD_B = 0x20, 0x30  # BPF_LD | BPF_W/BPF_B | BPF_ABS
AND_K, XOR_X, MUL_K, RSH_K, MOD_K = 0x54, 0xAC, 0x24, 0x74, 0x94
TAX, JEQ_K, JA, RET_A, RET_K = 0x07, 0x15, 0x05, 0x16, 0x06


def insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def program(workers: int, aggregate: bool) -> list[bytes]:
    """hash(client address or prefix) % workers, for IPv4 and IPv6 (also v4-mapped on a v6 socket)."""
    keep_v4 = 0xFFFFFF00 if aggregate else 0xFFFFFFFF  # /24
    if aggregate:  # /56: the first 32 bits, then 24 more
        v6 = [insn(LD_W, NET + 8), insn(TAX), insn(LD_W, NET + 12), insn(AND_K, 0xFFFFFF00), insn(XOR_X)]
    else:  # all 128 bits
        v6 = [insn(LD_W, NET + 8), insn(TAX)]
        for off in (12, 16, 20):
            v6 += [insn(LD_W, NET + off), insn(XOR_X), insn(TAX)]
        v6.pop()
    v4 = [insn(LD_W, NET + 12), insn(AND_K, keep_v4)]
    v6.append(insn(JA, len(v4)))  # over the IPv4 part, to the hash
    head = [insn(LD_B, NET), insn(RSH_K, 4), insn(JEQ_K, 6, 0, len(v6))]
    mix = [insn(TAX), insn(RSH_K, 16), insn(XOR_X)]  # h ^= h >> 16
    for k, shift in zip(MIX, (13, 16)):
        mix += [insn(MUL_K, k), insn(TAX), insn(RSH_K, shift), insn(XOR_X)]
    return head + v6 + v4 + mix + [insn(MOD_K, workers), insn(RET_A)]


def attach(sock: socket.socket, code: list[bytes]) -> None:
    """`code` becomes the program of `sock`'s reuseport group; OSError if the kernel refuses it."""
    buf = ctypes.create_string_buffer(b"".join(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                    struct.pack("HxxxxxxP", len(code), ctypes.addressof(buf)))


def steer(sock: socket.socket, workers: int, aggregate: bool) -> None:
    attach(sock, program(workers, aggregate))


def spread(sock: socket.socket) -> None:
    """Back to the kernel's hash of address and port."""
    attach(sock, [insn(RET_K, NO_INDEX)])
