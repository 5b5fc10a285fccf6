/* memprof: libc allocation calls of a process tree, from uprobes at function entry.
 *
 * Entry probes only (no uretprobes: they cost a second trap per call). Per
 * function: calls and requested bytes; one log-linear size histogram per
 * layer; allocating user stacks on 1 call in SAMPLE_N (stack walks are the
 * expensive part). Slots FN_PY_* are CPython's PyObject_* layer (--pymalloc).
 * Per process (heimdall_procs): libc allocation calls and bytes, frees, and
 * CPython object allocations. Uprobes are attached per process (memprof.py
 * follows new ones); the tgid filter keeps the count to the watched tree.
 * Compiled with -DSAMPLE_N=<n>, and with -DOUTSTANDING for the blocks still
 * live at the end of the window (outstanding.bpf.h).
 */
#include <uapi/linux/ptrace.h>
#include "common.bpf.h"

#define FN_MALLOC 0
#define FN_CALLOC 1
#define FN_REALLOC 2
#define FN_FREE 3
#define FN_POSIX_MEMALIGN 4
#define FN_ALIGNED_ALLOC 5
#define FN_PY_MALLOC 6
#define FN_PY_CALLOC 7
#define FN_PY_REALLOC 8
#define FN_PY_FREE 9
#define FN_SLOTS 10

#define LAYER_LIBC 0
#define LAYER_PY 1

#define PROC_ALLOCS 0      /* heimdall_procs counters */
#define PROC_BYTES 1
#define PROC_FREES 2
#define PROC_PY_ALLOCS 3

struct fn_stat {
    u64 calls;
    u64 bytes;
    u64 null_or_zero;   /* free(NULL) / zero-size requests */
};

/* At function entry the frame pointer still belongs to the caller, so a
 * frame-pointer walk skips the direct caller: keep its return address (on
 * x86-64 on top of the stack, on arm64 in the link register). */
struct stack_key {
    u64 caller;
    int stack_id;
    u32 layer;
};

struct stack_stat {
    u64 samples;
    u64 bytes;
    u32 tgid;      /* the first process seen on this stack: its maps symbolize it */
    u32 pad;
};

BPF_ARRAY(fn_stats, struct fn_stat, FN_SLOTS);
BPF_ARRAY(size_hist, u64, HIST_BUCKETS * 2);
BPF_ARRAY(sample_ctr, u64, 2);
BPF_HASH(stack_stats, struct stack_key, struct stack_stat, 8192);
BPF_STACK_TRACE(stacks, 8192);

/* Records the call's stack 1 time in SAMPLE_N; returns 1 when it did, and the
 * key it used is then in *out. */
static __always_inline int sample_stack(struct pt_regs *ctx, int layer, u64 size, u32 tgid,
                                        struct stack_key *out)
{
    u64 *n = sample_ctr.lookup(&layer);
    if (!n) return 0;
    u64 seen = __sync_fetch_and_add(n, 1);
    if (seen % SAMPLE_N) return 0;
    struct stack_key k = {};
    k.stack_id = heimdall_stack_check(stacks.get_stackid(ctx, BPF_F_USER_STACK));
    k.layer = layer;
#ifdef bpf_target_arm64
    k.caller = PT_REGS_RET(ctx);   /* x30 */
#else
    bpf_probe_read_user(&k.caller, sizeof(k.caller), (void *)PT_REGS_SP(ctx));
#endif
    *out = k;
    struct stack_stat zero = {.tgid = tgid};
    struct stack_stat *s = stack_stats.lookup_or_try_init(&k, &zero);
    if (!s) { heimdall_lose(LOST_MAP_FULL); return 1; }
    __sync_fetch_and_add(&s->samples, 1);
    __sync_fetch_and_add(&s->bytes, size);
    return 1;
}

#ifdef OUTSTANDING
#include "outstanding.bpf.h"
#endif

/* old: realloc's block; memptr: where posix_memalign stores the new block */
static __always_inline int on_alloc_at(struct pt_regs *ctx, int fn, int layer, u64 size, u64 old, u64 memptr)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!heimdall_tgid_is_target(tgid) || !heimdall_enabled()) return 0;
    struct fn_stat *st = fn_stats.lookup(&fn);
    if (st) {
        __sync_fetch_and_add(&st->calls, 1);
        __sync_fetch_and_add(&st->bytes, size);
        if (size == 0) __sync_fetch_and_add(&st->null_or_zero, 1);
    }
    size_hist.atomic_increment(hist_key(layer, size));
    if (layer == LAYER_LIBC) {
        heimdall_proc_add(tgid, PROC_ALLOCS, 1);
        heimdall_proc_add(tgid, PROC_BYTES, size);
    } else {
        heimdall_proc_add(tgid, PROC_PY_ALLOCS, 1);
    }
    struct stack_key key = {};
    int sampled = sample_stack(ctx, layer, size, tgid, &key);
#ifdef OUTSTANDING
    if (layer == LAYER_LIBC)
        live_pending(fn, size, old, memptr, sampled ? &key : 0);
#endif
    return 0;
}

static __always_inline int on_alloc(struct pt_regs *ctx, int fn, int layer, u64 size)
{
    return on_alloc_at(ctx, fn, layer, size, 0, 0);
}

static __always_inline int on_free(int fn, u64 ptr)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!heimdall_tgid_is_target(tgid) || !heimdall_enabled()) return 0;
    struct fn_stat *st = fn_stats.lookup(&fn);
    if (st) {
        __sync_fetch_and_add(&st->calls, 1);
        if (!ptr) __sync_fetch_and_add(&st->null_or_zero, 1);
    }
    if (fn == FN_FREE) {
        heimdall_proc_add(tgid, PROC_FREES, 1);
#ifdef OUTSTANDING
        live_forget(tgid, ptr, LIVE_FREED);
#endif
    }
    return 0;
}

int malloc_enter(struct pt_regs *ctx, size_t size) { return on_alloc(ctx, FN_MALLOC, LAYER_LIBC, size); }
int calloc_enter(struct pt_regs *ctx, size_t n, size_t size) { return on_alloc(ctx, FN_CALLOC, LAYER_LIBC, (u64)n * size); }
int realloc_enter(struct pt_regs *ctx, void *ptr, size_t size)
{
    return on_alloc_at(ctx, FN_REALLOC, LAYER_LIBC, size, (u64)ptr, 0);
}
int free_enter(struct pt_regs *ctx, void *ptr) { return on_free(FN_FREE, (u64)ptr); }
int posix_memalign_enter(struct pt_regs *ctx, void **memptr, size_t align, size_t size)
{
    return on_alloc_at(ctx, FN_POSIX_MEMALIGN, LAYER_LIBC, size, 0, (u64)memptr);
}
int aligned_alloc_enter(struct pt_regs *ctx, size_t align, size_t size)
{
    return on_alloc(ctx, FN_ALIGNED_ALLOC, LAYER_LIBC, size);
}

int py_malloc_enter(struct pt_regs *ctx, size_t size) { return on_alloc(ctx, FN_PY_MALLOC, LAYER_PY, size); }
int py_calloc_enter(struct pt_regs *ctx, size_t n, size_t size) { return on_alloc(ctx, FN_PY_CALLOC, LAYER_PY, (u64)n * size); }
int py_realloc_enter(struct pt_regs *ctx, void *ptr, size_t size) { return on_alloc(ctx, FN_PY_REALLOC, LAYER_PY, size); }
int py_free_enter(struct pt_regs *ctx, void *ptr) { return on_free(FN_PY_FREE, (u64)ptr); }
