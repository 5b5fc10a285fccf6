/* memprof --outstanding: the libc blocks allocated in the window and not
 * freed (yet), for the leak and growth report (probes/outstanding.py).
 *
 * An allocation's address is known only when the function returns, so the
 * entry probe (memprof.bpf.c) parks size, sampled stack and realloc's old
 * block per thread in `pending`, and a return probe (alloc_return) files the
 * new block in `live`, keyed by (tgid, address). free() removes its block;
 * realloc() removes its old block once it returned a new one (or freed it:
 * realloc(p, 0)). A free of a block that is not in `live` (allocated before
 * the window opened, or one that did not fit) changes nothing: it is counted
 * in OUT_FREED_UNKNOWN, never as a negative outstanding size.
 * live_totals holds the outstanding bytes and blocks at every instant, read
 * once a second by Python for the growth rate. An allocation that finds
 * `live` full is counted (OUT_UNTRACKED, LOST_MAP_FULL) and not tracked.
 * glibc's realloc(NULL, n) and small-alignment posix_memalign call malloc
 * through the same entry point: the inner malloc replaces the outer call's
 * pending record, so the block is filed once.
 * Compiled with -DLIVE_MAX=<n> (blocks tracked at once).
 */
#ifndef LIVE_MAX
#define LIVE_MAX 131072
#endif

#define OUT_BYTES 0            /* outstanding bytes now */
#define OUT_BLOCKS 1           /* outstanding blocks now */
#define OUT_UNTRACKED 2        /* allocations that found `live` full */
#define OUT_UNTRACKED_BYTES 3
#define OUT_FREED_TRACKED 4    /* frees of blocks allocated in the window */
#define OUT_FREED_UNKNOWN 5    /* frees of blocks from before the window (or untracked) */
#define OUT_SLOTS 8

#define LIVE_FREED 0
#define LIVE_MOVED 1           /* realloc's old block */

struct live_key {
    u32 tgid;
    u32 pad;
    u64 addr;
};

struct live_block {
    u64 size;
    u64 ts_ns;
    u64 caller;
    int stack_id;
    u32 sampled;
};

struct pending_alloc {
    u64 size;
    u64 old;
    u64 memptr;
    u64 caller;
    int stack_id;
    u32 fn;
    u32 sampled;
    u32 pad;
};

BPF_HASH(live, struct live_key, struct live_block, LIVE_MAX);
BPF_HASH(pending, u64, struct pending_alloc, 16384);
BPF_ARRAY(live_totals, s64, OUT_SLOTS);

static __always_inline void live_add(int slot, s64 n)
{
    s64 *c = live_totals.lookup(&slot);
    if (c) __sync_fetch_and_add(c, n);
}

static __always_inline void live_pending(int fn, u64 size, u64 old, u64 memptr, struct stack_key *key)
{
    u64 id = bpf_get_current_pid_tgid();
    struct pending_alloc p = {.size = size, .old = old, .memptr = memptr, .fn = fn, .stack_id = -1};
    if (key) {
        p.caller = key->caller;
        p.stack_id = key->stack_id;
        p.sampled = 1;
    }
    if (pending.update(&id, &p)) {
        heimdall_lose(LOST_MAP_FULL);
        live_add(OUT_UNTRACKED, 1);
        live_add(OUT_UNTRACKED_BYTES, size);
    }
}

static __always_inline void live_forget(u32 tgid, u64 addr, int why)
{
    if (!addr) return;
    struct live_key k = {.tgid = tgid, .addr = addr};
    struct live_block *b = live.lookup(&k);
    if (!b) {
        if (why == LIVE_FREED) live_add(OUT_FREED_UNKNOWN, 1);
        return;
    }
    s64 size = b->size;
    if (live.delete(&k) == 0) {     /* only the one delete that succeeded moves the totals */
        live_add(OUT_BYTES, -size);
        live_add(OUT_BLOCKS, -1);
        if (why == LIVE_FREED) live_add(OUT_FREED_TRACKED, 1);
    }
}

static __always_inline void live_file(u32 tgid, u64 addr, struct pending_alloc *a)
{
    struct live_key k = {.tgid = tgid, .addr = addr};
    struct live_block b = {.size = a->size, .ts_ns = bpf_ktime_get_ns(), .caller = a->caller,
                           .stack_id = a->stack_id, .sampled = a->sampled};
    struct live_block *seen = live.lookup(&k);
    if (seen) {                      /* its free went unseen: the address is live again */
        live_add(OUT_BYTES, (s64)a->size - (s64)seen->size);
        live.update(&k, &b);
        return;
    }
    if (live.insert(&k, &b)) {
        heimdall_lose(LOST_MAP_FULL);
        live_add(OUT_UNTRACKED, 1);
        live_add(OUT_UNTRACKED_BYTES, a->size);
        return;
    }
    live_add(OUT_BYTES, a->size);
    live_add(OUT_BLOCKS, 1);
}

/* Return probe of malloc, calloc, realloc, posix_memalign and aligned_alloc. */
int alloc_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct pending_alloc *p = pending.lookup(&id);
    if (!p) return 0;
    struct pending_alloc a = *p;
    pending.delete(&id);
    if (!heimdall_enabled()) return 0;
    u32 tgid = id >> 32;
    u64 addr = PT_REGS_RC(ctx);
    if (a.fn == FN_POSIX_MEMALIGN) {
        if (addr) return 0;          /* an error number: nothing was allocated */
        bpf_probe_read_user(&addr, sizeof(addr), (void *)a.memptr);
    }
    if (a.fn == FN_REALLOC && (addr || a.size == 0))
        live_forget(tgid, a.old, LIVE_MOVED);   /* realloc(p, 0) frees through free() itself */
    if (addr) live_file(tgid, addr, &a);
    return 0;
}
