/* lockprof: futex waits, their wakers, and kernel lock contention of a process tree.
 *
 * Every futex wait op counts (WAIT, WAIT_BITSET: CPython's GIL, LOCK_PI,
 * LOCK_PI2, WAIT_REQUEUE_PI, futex_waitv, futex2 futex_wait), not only
 * FUTEX_WAIT as bcc's futexctn does. Outcome comes from the return value.
 * Per (process, tid, uaddr, user stack): count, total, max; one log-linear
 * histogram of wait time in ns. Wake ops record who woke which address (in
 * which process: a futex address means something only in its own address
 * space) and how many. Per process (heimdall_procs): waits, wait ns, wake calls.
 * Compiled with [-DHAVE_FUTEX_WAITV] [-DHAVE_FUTEX_WAIT2] [-DHAVE_LOCK_CONTENTION].
 */
#include "common.bpf.h"

#define FUTEX_CMD_MASK 127          /* strips FUTEX_PRIVATE_FLAG (128), FUTEX_CLOCK_REALTIME (256) */
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define FUTEX_REQUEUE 3
#define FUTEX_CMP_REQUEUE 4
#define FUTEX_WAKE_OP 5
#define FUTEX_LOCK_PI 6
#define FUTEX_UNLOCK_PI 7
#define FUTEX_WAIT_BITSET 9
#define FUTEX_WAKE_BITSET 10
#define FUTEX_WAIT_REQUEUE_PI 11
#define FUTEX_CMP_REQUEUE_PI 12
#define FUTEX_LOCK_PI2 13
#define OP_WAITV 64                 /* pseudo ops for the newer syscalls */
#define OP_FUTEX2_WAIT 65
#define OP_FUTEX2_WAKE 66
#define OP_SLOTS 128

#define OUT_WOKEN 0
#define OUT_TIMEDOUT 1
#define OUT_EAGAIN 2
#define OUT_EINTR 3
#define OUT_OTHER 4
#define OUT_SLOTS 5

#define PROC_WAITS 0                /* heimdall_procs counters */
#define PROC_WAIT_NS 1
#define PROC_WAKES 2

struct start_t {
    u64 ts;
    u64 uaddr;
    u32 op;
    int stack_id;
};

struct wait_key {
    u64 uaddr;
    u32 tid;
    int stack_id;
    u32 op;
    u32 tgid;
};

struct wait_val {
    u64 count;
    u64 total_ns;
    u64 max_ns;
    u64 outcomes[OUT_SLOTS];
};

struct wake_key {
    u64 uaddr;
    u32 tid;
    u32 tgid;
};

struct wake_val {
    u64 calls;
    u64 woken;
};

struct stat_t {
    u64 count;
    u64 total_ns;
    u64 max_ns;
};

BPF_HASH(start, u32, struct start_t, 16384);
BPF_HASH(waits, struct wait_key, struct wait_val, 16384);
BPF_HASH(wakes, struct wake_key, struct wake_val, 16384);
BPF_ARRAY(by_op, struct stat_t, OP_SLOTS);
BPF_ARRAY(by_outcome, struct stat_t, OUT_SLOTS);
BPF_ARRAY(wait_hist, u64, HIST_BUCKETS);
BPF_STACK_TRACE(stacks, 8192);

struct comm_t {
    char comm[16];
};
BPF_HASH(comms, u32, struct comm_t, 16384);   /* thread names, kept after threads exit */

static __always_inline int is_wait_op(u32 cmd)
{
    return cmd == FUTEX_WAIT || cmd == FUTEX_WAIT_BITSET || cmd == FUTEX_LOCK_PI ||
           cmd == FUTEX_LOCK_PI2 || cmd == FUTEX_WAIT_REQUEUE_PI ||
           cmd == OP_WAITV || cmd == OP_FUTEX2_WAIT;
}

static __always_inline int is_wake_op(u32 cmd)
{
    return cmd == FUTEX_WAKE || cmd == FUTEX_WAKE_BITSET || cmd == FUTEX_UNLOCK_PI ||
           cmd == FUTEX_WAKE_OP || cmd == FUTEX_REQUEUE || cmd == FUTEX_CMP_REQUEUE ||
           cmd == FUTEX_CMP_REQUEUE_PI || cmd == OP_FUTEX2_WAKE;
}

static __always_inline void stat_add(struct stat_t *s, u64 delta)
{
    if (!s) return;
    __sync_fetch_and_add(&s->count, 1);
    __sync_fetch_and_add(&s->total_ns, delta);
    if (delta > s->max_ns) s->max_ns = delta;
}

static __always_inline void on_enter(void *ctx, u64 uaddr, u32 cmd)
{
    if (!heimdall_is_target() || !heimdall_enabled()) return;
    if (!is_wait_op(cmd) && !is_wake_op(cmd)) return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct start_t s = {};
    s.ts = bpf_ktime_get_ns();
    s.uaddr = uaddr;
    s.op = cmd;
    s.stack_id = is_wait_op(cmd) ? heimdall_stack_check(stacks.get_stackid(ctx, BPF_F_USER_STACK)) : -1;
    if (start.update(&tid, &s) != 0) heimdall_lose(LOST_MAP_FULL);
    if (!comms.lookup(&tid)) {
        struct comm_t c = {};
        bpf_get_current_comm(&c.comm, sizeof(c.comm));
        comms.update(&tid, &c);
    }
}

static __always_inline int outcome_of(long ret)
{
    if (ret >= 0) return OUT_WOKEN;       /* 0, or futex_waitv's woken index */
    if (ret == -110) return OUT_TIMEDOUT;
    if (ret == -11) return OUT_EAGAIN;
    if (ret == -4) return OUT_EINTR;
    return OUT_OTHER;
}

static __always_inline void record_wait(struct start_t *s, u32 tgid, u32 tid, long ret, u64 delta)
{
    int out = outcome_of(ret);
    struct wait_key k = {};
    k.uaddr = s->uaddr;
    k.tid = tid;
    k.tgid = tgid;
    k.stack_id = s->stack_id;
    k.op = s->op;
    struct wait_val zero = {};
    struct wait_val *v = waits.lookup_or_try_init(&k, &zero);
    if (v) {
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->total_ns, delta);
        if (delta > v->max_ns) v->max_ns = delta;
        if (out >= 0 && out < OUT_SLOTS) __sync_fetch_and_add(&v->outcomes[out], 1);
    } else {
        heimdall_lose(LOST_MAP_FULL);
    }
    int op = s->op & (OP_SLOTS - 1);
    stat_add(by_op.lookup(&op), delta);
    stat_add(by_outcome.lookup(&out), delta);
    wait_hist.atomic_increment(hist_key(0, delta));
    heimdall_proc_add(tgid, PROC_WAITS, 1);
    heimdall_proc_add(tgid, PROC_WAIT_NS, delta);
}

static __always_inline void record_wake(struct start_t *s, u32 tgid, u32 tid, long ret)
{
    struct wake_key k = {};
    k.uaddr = s->uaddr;
    k.tid = tid;
    k.tgid = tgid;
    struct wake_val zero = {};
    struct wake_val *v = wakes.lookup_or_try_init(&k, &zero);
    if (!v) { heimdall_lose(LOST_MAP_FULL); return; }
    __sync_fetch_and_add(&v->calls, 1);
    if (ret > 0) __sync_fetch_and_add(&v->woken, (u64)ret);
    int op = s->op & (OP_SLOTS - 1);
    stat_add(by_op.lookup(&op), 0);
    heimdall_proc_add(tgid, PROC_WAKES, 1);
}

static __always_inline void on_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!heimdall_tgid_is_target(tgid)) return;
    struct start_t *s = start.lookup(&tid);
    if (!s) return;
    struct start_t copy = *s;
    start.delete(&tid);
    if (!heimdall_enabled()) return;     /* window closed while it waited */
    if (is_wait_op(copy.op))
        record_wait(&copy, tgid, tid, ret, bpf_ktime_get_ns() - copy.ts);
    else
        record_wake(&copy, tgid, tid, ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_futex)
{
    on_enter(args, (u64)args->uaddr, (u32)args->op & FUTEX_CMD_MASK);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex)
{
    on_exit(args->ret);
    return 0;
}

#ifdef HAVE_FUTEX_WAITV
TRACEPOINT_PROBE(syscalls, sys_enter_futex_waitv)
{
    u64 uaddr = 0;   /* first waiter's address: struct futex_waitv { u64 val; u64 uaddr; ... } */
    bpf_probe_read_user(&uaddr, sizeof(uaddr), (char *)args->waiters + 8);
    on_enter(args, uaddr, OP_WAITV);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex_waitv)
{
    on_exit(args->ret);
    return 0;
}
#endif

#ifdef HAVE_FUTEX_WAIT2
TRACEPOINT_PROBE(syscalls, sys_enter_futex_wait)
{
    on_enter(args, (u64)args->uaddr, OP_FUTEX2_WAIT);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex_wait)
{
    on_exit(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_futex_wake)
{
    on_enter(args, (u64)args->uaddr, OP_FUTEX2_WAKE);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex_wake)
{
    on_exit(args->ret);
    return 0;
}
#endif

#ifdef HAVE_LOCK_CONTENTION
struct kstart_t {
    u64 ts;
    u64 lock;
    u32 flags;
    int kstack;
};

struct klock_key {
    u64 lock;
    u32 flags;
    int kstack;
};

BPF_HASH(kstart, u32, struct kstart_t, 16384);
BPF_HASH(klocks, struct klock_key, struct stat_t, 8192);
BPF_ARRAY(klock_hist, u64, HIST_BUCKETS);

TRACEPOINT_PROBE(lock, contention_begin)
{
    if (!heimdall_is_target() || !heimdall_enabled()) return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct kstart_t s = {};
    s.ts = bpf_ktime_get_ns();
    s.lock = (u64)args->lock_addr;
    s.flags = args->flags;
    s.kstack = heimdall_stack_check(stacks.get_stackid(args, 0));
    if (kstart.update(&tid, &s) != 0) heimdall_lose(LOST_MAP_FULL);
    return 0;
}

TRACEPOINT_PROBE(lock, contention_end)
{
    if (!heimdall_is_target()) return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct kstart_t *s = kstart.lookup(&tid);
    if (!s) return 0;
    struct kstart_t copy = *s;
    kstart.delete(&tid);
    if (!heimdall_enabled() || copy.lock != (u64)args->lock_addr) return 0;
    u64 delta = bpf_ktime_get_ns() - copy.ts;
    struct klock_key k = {};
    k.lock = copy.lock;
    k.flags = copy.flags;
    k.kstack = copy.kstack;
    struct stat_t zero = {};
    struct stat_t *v = klocks.lookup_or_try_init(&k, &zero);
    if (!v) { heimdall_lose(LOST_MAP_FULL); return 0; }
    stat_add(v, delta);
    klock_hist.atomic_increment(hist_key(0, delta));
    return 0;
}
#endif
