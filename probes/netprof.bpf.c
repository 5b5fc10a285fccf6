/* netprof: UDP receive-queue latency, drops, syscall batching, in-server time.
 *
 * Tracepoints only (this kernel has no kprobes):
 *  - sock:sk_data_ready fires in softirq (current pid is NOT the server) once
 *    per datagram queued on a UDP socket. We key by the socket address, keep
 *    only sockets whose local port is in net_ports, and push the arrival time
 *    onto a per-socket FIFO (ring slots in an LRU hash keyed by (sk, seq)).
 *  - sock:sock_recv_length runs in the reader's context once per datagram
 *    read (recvfrom/recvmsg and each message of recvmmsg): it pops the oldest
 *    timestamp; now - ts is the datagram's time in the receive queue. UDP
 *    queues are FIFO, so the n-th pop matches the n-th push. A read failing
 *    with EAGAIN proves the queue empty, so leftover timestamps (datagrams
 *    queued before we attached) are discarded there: the FIFO re-aligns.
 *    A reader on another CPU may take a datagram before its sk_data_ready
 *    fires; that read is settled by the push that follows (see EARLY_NS),
 *    or, if the push has taken its sequence but not yet written its slot,
 *    at once (see IN_FLIGHT_PUSHES).
 *  - udp:udp_fail_queue_rcv_skb (raw tracepoint: its socket argument is not
 *    in the tracefs record): a datagram dropped at the socket (receive buffer
 *    full), by the socket's port and per socket; a socket's drops belong to the
 *    process that reads it. sock:sock_rcvqueue_full has no socket or port and
 *    is reported as a global count only.
 *  - syscalls:sys_enter/exit_* of recv/send/epoll in the watched processes:
 *    count, latency, items per call (datagrams per recvmmsg/sendmmsg, events
 *    per epoll wait). A recv/send call counts only if it touched a UDP socket.
 *  - per process (heimdall_procs): datagrams read, recv/send syscalls, epoll
 *    waits; the reader of each watched socket (sock_fifo.owner).
 *  - server time (an approximation): per thread, from a read returning a
 *    datagram on a watched socket to the next send on that same socket by that
 *    thread. A send answers the most recent read, so with batching (read N,
 *    answer N) or cache misses (answer sent later, after other reads) it
 *    measures from the latest read and underestimates.
 * Counters and histograms only move while the window flag is set; the FIFO
 * always runs so it stays aligned across the warm-up.
 */
#include <linux/socket.h>
#include <net/sock.h>
#include "common.bpf.h"

#define RING_SLOTS 4096            /* per-socket FIFO depth (power of two) */
#define RING_MASK (RING_SLOTS - 1)
/* The datagram is queued before sk_data_ready fires, so a reader already
 * running on another CPU can take it first: its read finds the FIFO empty.
 * If the push follows within EARLY_NS, it is that datagram (queue time ~0);
 * an older early read was a datagram queued before we attached. */
#define EARLY_NS 2000000ULL
/* A push takes its sequence (tail++) before it writes the slot, and a vCPU can
 * be preempted in between: a read of one of the last few sequences whose slot
 * still holds an older lap (or nothing) races that push, it is not an overflow.
 * At most one push per CPU can be in that window. */
#define IN_FLIGHT_PUSHES 4

/* syscall kinds: index into net_sys and the latency/batch histograms */
#define K_RECVFROM 0
#define K_RECVMSG 1
#define K_RECVMMSG 2
#define K_SENDTO 3
#define K_SENDMSG 4
#define K_SENDMMSG 5
#define K_EPOLL_WAIT 6
#define K_EPOLL_PWAIT 7
#define K_EPOLL_PWAIT2 8
#define NKINDS 9

/* histogram slots in net_hist (ns) */
#define H_QUEUE 0
#define H_SERVER 1
#define H_SYSCALL 2                /* + kind */
#define NHIST (H_SYSCALL + NKINDS)

/* global counters in net_count */
#define C_QUEUED 0          /* datagrams queued on watched sockets (window) */
#define C_MATCHED 1         /* reads by the target matched to a queue time */
#define C_UNMATCHED 2       /* reads never matched to a push (queued before attach) */
#define C_OVERFLOW 3        /* reads whose slot was overwritten or evicted */
#define C_RESYNC 4          /* stale timestamps discarded at an EAGAIN read */
#define C_DROPS 5           /* udp_fail_queue_rcv_skb on watched ports */
#define C_DROPS_ALL 6       /* udp_fail_queue_rcv_skb, any port */
#define C_RCVQ_FULL 7       /* sock_rcvqueue_full, any socket (no port given) */
#define C_SENT 8            /* datagrams sent by the target on watched sockets */
#define C_OTHER_READER 9    /* datagrams on watched sockets read by another process */
#define C_SERVER_UNPAIRED 10 /* sends on a watched socket with no read before */
#define C_EARLY 11          /* reads that beat their sk_data_ready (queue time ~0) */
#define NCOUNT 12

/* heimdall_procs counters */
#define PROC_DATAGRAMS 0
#define PROC_RECV 1
#define PROC_SEND 2
#define PROC_EPOLL 3

struct port_stat {
    u64 queued;
    u64 read;
    u64 drops;
};

struct sock_fifo {
    u64 head;     /* next sequence to pop */
    u64 tail;     /* next sequence to push */
    u64 port;
    u64 early_ts; /* a read that found the FIFO empty (see EARLY_NS) */
    u32 early;
    u32 early_tgid; /* that read's process when watched, else 0 */
    u32 owner;      /* the watched process that last read this socket */
    u32 pad;
};

struct slot_key {
    u64 sk;
    u64 idx;
};

struct slot_val {
    u64 seq;
    u64 ts;
};

struct sys_stat {
    u64 calls;
    u64 errors;   /* ret < 0 (mostly EAGAIN on non-blocking sockets) */
    u64 items;    /* sum of ret > 0 for batching kinds (datagrams or events) */
    u64 empty;    /* ret == 0: epoll timeouts */
};

struct inflight {
    u64 ts;
    u32 kind;
    u32 udp;
};

struct pending {
    u64 ts;
    u64 sk;
};

BPF_HASH(net_ports, u16, struct port_stat, 256);
BPF_HASH(net_socks, u64, struct sock_fifo, 4096);
BPF_TABLE("lru_hash", struct slot_key, struct slot_val, net_ring, 65536);
BPF_ARRAY(net_hist, u64, HIST_BUCKETS * NHIST);
BPF_ARRAY(net_batch, u64, HIST_BUCKETS * NKINDS);
BPF_ARRAY(net_sys, struct sys_stat, NKINDS);
BPF_ARRAY(net_count, u64, NCOUNT);
BPF_ARRAY(net_max, u64, 2);        /* exact max of queue (0) and server (1) time */
BPF_HASH(net_inflight, u32, struct inflight, 4096);
BPF_HASH(net_pending, u32, struct pending, 4096);
BPF_HASH(net_sock_drops, u64, u64, 4096);   /* socket -> drops in the window */

static __always_inline void count(int slot, u64 n)
{
    u64 *c = net_count.lookup(&slot);
    if (c) __sync_fetch_and_add(c, n);
}

static __always_inline void track_max(int slot, u64 v)
{
    u64 *m = net_max.lookup(&slot);
    if (m && v > *m) *m = v;    /* racy between CPUs: off by one sample at worst */
}

static __always_inline void hist_add(int slot, u64 v)
{
    net_hist.atomic_increment(hist_key(slot, v));
}

static __always_inline void batch_add(int kind, u64 v)
{
    net_batch.atomic_increment(hist_key(kind, v));
}

/* A datagram read (window open) whose queue time is known: by a watched
 * process (tgid), or by another process (0) on a watched socket. */
static __always_inline void settle_read(u16 port, u32 tgid, u64 lat)
{
    if (!tgid) {
        count(C_OTHER_READER, 1);
        return;
    }
    hist_add(H_QUEUE, lat);
    track_max(0, lat);
    count(C_MATCHED, 1);
    heimdall_proc_add(tgid, PROC_DATAGRAMS, 1);
    struct port_stat *ps = net_ports.lookup(&port);
    if (ps)
        __sync_fetch_and_add(&ps->read, 1);
}

static __always_inline u16 sk_local_port(const void *skaddr)
{
    const struct sock *sk = skaddr;
    u16 num = 0;
    bpf_probe_read_kernel(&num, sizeof(num), &sk->__sk_common.skc_num);
    return num;
}

static __always_inline int is_udp(u16 family, u16 protocol)
{
    return protocol == IPPROTO_UDP && (family == AF_INET || family == AF_INET6);
}

/* Datagram queued: push its arrival time on the socket's FIFO. */
TRACEPOINT_PROBE(sock, sk_data_ready)
{
    if (!is_udp(args->family, args->protocol))
        return 0;
    u64 sk = (u64)args->skaddr;
    u16 port = sk_local_port(args->skaddr);
    struct port_stat *ps = net_ports.lookup(&port);
    if (!ps)
        return 0;
    struct sock_fifo *f = net_socks.lookup(&sk);
    if (!f || f->port != port) {   /* new socket, or a recycled address */
        struct sock_fifo fresh = {.port = port};
        if (net_socks.update(&sk, &fresh) != 0) {
            heimdall_lose(LOST_MAP_FULL);
            return 0;
        }
        f = net_socks.lookup(&sk);
        if (!f)
            return 0;
    }
    u64 now = bpf_ktime_get_ns();
    int on = heimdall_enabled();
    if (f->early) {
        f->early = 0;
        if (now - f->early_ts < EARLY_NS) {   /* already read: the reader won the race */
            if (on) {
                __sync_fetch_and_add(&ps->queued, 1);
                count(C_QUEUED, 1);
                count(C_EARLY, 1);
                settle_read(port, f->early_tgid, 0);
            }
            return 0;
        }
        if (on)
            count(C_UNMATCHED, 1);
    }
    u64 seq = __sync_fetch_and_add(&f->tail, 1);
    struct slot_key key = {.sk = sk, .idx = seq & RING_MASK};
    struct slot_val val = {.seq = seq, .ts = now};
    if (net_ring.update(&key, &val) != 0)
        heimdall_lose(LOST_MAP_FULL);
    if (on) {
        __sync_fetch_and_add(&ps->queued, 1);
        count(C_QUEUED, 1);
    }
    return 0;
}

/* Mark the target thread's in-flight recv/send syscall as one on a UDP socket. */
static __always_inline void mark_udp_syscall(u32 tid)
{
    struct inflight *in = net_inflight.lookup(&tid);
    if (in)
        in->udp = 1;
}

/* Datagram read (or a failed read): pop the FIFO, record the queue time. */
TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (!is_udp(args->family, args->protocol))
        return 0;
    if (args->flags & (MSG_PEEK | MSG_ERRQUEUE))
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    u32 reader = pid_tgid >> 32;
    int target = heimdall_tgid_is_target(reader);
    if (!target)
        reader = 0;
    int on = heimdall_enabled();
    if (target)
        mark_udp_syscall(tid);
    u64 sk = (u64)args->sk;
    struct sock_fifo *f = net_socks.lookup(&sk);
    if (!f)
        return 0;
    if (target)
        f->owner = reader;
    if (args->ret < 0) {
        if (args->ret == -EAGAIN && f->tail > f->head) {
            if (on)
                count(C_RESYNC, f->tail - f->head);
            f->head = f->tail;
        }
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    if (target) {
        struct pending p = {.ts = now, .sk = sk};
        net_pending.update(&tid, &p);
    }
    if (f->head >= f->tail) {          /* early read: settled at the next push */
        if (f->early && on)
            count(C_UNMATCHED, 1);
        f->early = 1;
        f->early_ts = now;
        f->early_tgid = reader;
        return 0;
    }
    u64 seq = __sync_fetch_and_add(&f->head, 1);
    struct slot_key key = {.sk = sk, .idx = seq & RING_MASK};
    struct slot_val *val = net_ring.lookup(&key);
    if (val && val->seq == seq) {
        if (on)
            settle_read(f->port, reader, now - val->ts);
        return 0;
    }
    if (!on)
        return 0;
    if ((!val || val->seq < seq) && f->tail - seq <= IN_FLIGHT_PUSHES) {
        count(C_EARLY, 1);               /* its push is still writing the slot */
        settle_read(f->port, reader, 0);
    } else {
        count(C_OVERFLOW, 1);
    }
    return 0;
}

/* Reply sent: close the thread's read-to-send interval on the same socket. */
TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (!is_udp(args->family, args->protocol))
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!heimdall_tgid_is_target(pid_tgid >> 32))
        return 0;
    u32 tid = (u32)pid_tgid;
    mark_udp_syscall(tid);
    if (args->ret < 0)
        return 0;
    u64 sk = (u64)args->sk;
    if (!net_socks.lookup(&sk))
        return 0;
    int on = heimdall_enabled();
    if (on)
        count(C_SENT, 1);
    struct pending *p = net_pending.lookup(&tid);
    if (!p || p->sk != sk) {
        if (on)
            count(C_SERVER_UNPAIRED, 1);
        return 0;
    }
    u64 dt = bpf_ktime_get_ns() - p->ts;
    net_pending.delete(&tid);
    if (on) {
        hist_add(H_SERVER, dt);
        track_max(1, dt);
    }
    return 0;
}

/* Receive buffer full: the datagram is dropped before it is queued.
 * Raw arguments: (int rc, struct sock *sk[, struct sk_buff *skb]). */
RAW_TRACEPOINT_PROBE(udp_fail_queue_rcv_skb)
{
    if (!heimdall_enabled())
        return 0;
    count(C_DROPS_ALL, 1);
    u64 sk = ctx->args[1];
    if (!sk)
        return 0;
    u16 port = sk_local_port((const void *)sk);
    struct port_stat *ps = net_ports.lookup(&port);
    if (!ps)
        return 0;
    __sync_fetch_and_add(&ps->drops, 1);
    count(C_DROPS, 1);
    u64 zero = 0;
    u64 *d = net_sock_drops.lookup_or_try_init(&sk, &zero);
    if (d)
        __sync_fetch_and_add(d, 1);
    else
        heimdall_lose(LOST_MAP_FULL);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_rcvqueue_full)
{
    if (heimdall_enabled())
        count(C_RCVQ_FULL, 1);
    return 0;
}

static __always_inline int sys_enter(u32 kind)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!heimdall_tgid_is_target(pid_tgid >> 32))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct inflight in = {.ts = bpf_ktime_get_ns(), .kind = kind};
    if (net_inflight.update(&tid, &in) != 0)
        heimdall_lose(LOST_MAP_FULL);
    return 0;
}

static __always_inline int sys_exit(u32 kind, long ret)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!heimdall_tgid_is_target(pid_tgid >> 32))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct inflight *in = net_inflight.lookup(&tid);
    if (!in) {
        if (heimdall_enabled())
            heimdall_lose(LOST_NO_START);
        return 0;
    }
    struct inflight rec = *in;
    net_inflight.delete(&tid);
    if (rec.kind != kind || !heimdall_enabled())
        return 0;
    if (kind < K_EPOLL_WAIT && !rec.udp)
        return 0;                  /* a recv/send on a non-UDP socket */
    struct sys_stat *st = net_sys.lookup(&kind);
    if (!st)
        return 0;
    __sync_fetch_and_add(&st->calls, 1);
    heimdall_proc_add(pid_tgid >> 32, kind < K_SENDTO ? PROC_RECV : kind < K_EPOLL_WAIT ? PROC_SEND : PROC_EPOLL, 1);
    if (ret < 0)
        __sync_fetch_and_add(&st->errors, 1);
    else if (ret == 0)
        __sync_fetch_and_add(&st->empty, 1);
    else if (kind == K_RECVMMSG || kind == K_SENDMMSG || kind >= K_EPOLL_WAIT)
        __sync_fetch_and_add(&st->items, ret);
    hist_add(H_SYSCALL + kind, bpf_ktime_get_ns() - rec.ts);
    if (ret >= 0 && (kind == K_RECVMMSG || kind == K_SENDMMSG || kind >= K_EPOLL_WAIT))
        batch_add(kind, ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return sys_enter(K_RECVFROM); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return sys_exit(K_RECVFROM, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return sys_enter(K_RECVMSG); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return sys_exit(K_RECVMSG, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { return sys_enter(K_RECVMMSG); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg) { return sys_exit(K_RECVMMSG, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return sys_enter(K_SENDTO); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return sys_exit(K_SENDTO, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return sys_enter(K_SENDMSG); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return sys_exit(K_SENDMSG, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg) { return sys_enter(K_SENDMMSG); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return sys_exit(K_SENDMMSG, args->ret); }
/* arm64 (and every asm-generic architecture) has no epoll_wait syscall: libc's
 * epoll_wait() is epoll_pwait there, and the tracepoint does not exist. */
#ifdef HAVE_EPOLL_WAIT
TRACEPOINT_PROBE(syscalls, sys_enter_epoll_wait) { return sys_enter(K_EPOLL_WAIT); }
TRACEPOINT_PROBE(syscalls, sys_exit_epoll_wait) { return sys_exit(K_EPOLL_WAIT, args->ret); }
#endif
TRACEPOINT_PROBE(syscalls, sys_enter_epoll_pwait) { return sys_enter(K_EPOLL_PWAIT); }
TRACEPOINT_PROBE(syscalls, sys_exit_epoll_pwait) { return sys_exit(K_EPOLL_PWAIT, args->ret); }
#ifdef HAVE_EPOLL_PWAIT2
TRACEPOINT_PROBE(syscalls, sys_enter_epoll_pwait2) { return sys_enter(K_EPOLL_PWAIT2); }
TRACEPOINT_PROBE(syscalls, sys_exit_epoll_pwait2) { return sys_exit(K_EPOLL_PWAIT2, args->ret); }
#endif
