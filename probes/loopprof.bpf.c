/* loopprof: event-loop iterations and stalls of the loop threads of a process tree.
 *
 * A loop thread is a watched thread that returns from an epoll wait. One
 * iteration runs from an epoll wait's return to the same thread's next epoll
 * wait entry: the time the loop spent running callbacks, not waiting for
 * events. Every iteration whose end falls in the window goes into iter_hist
 * (ns); one at or above THRESHOLD_NS is a stall, sent to user space on
 * `stall_events` with the time its thread spent off the CPU inside it
 * (sched:sched_switch): asleep or blocked (prev_state S/D...) versus
 * runnable but preempted (prev_state R), and the kernel stack of its longest
 * blocked stretch. loop_threads holds each loop thread's iteration in
 * progress; user space reads it to catch a stall while it still runs.
 * Compiled with -DTHRESHOLD_NS=<ns>.
 */
#include "common.bpf.h"

#define TOT_ITERATIONS 0
#define TOT_STALLS 1
#define TOT_STALL_NS 2
#define TOT_SLOTS 4

#define PROC_ITERATIONS 0   /* heimdall_procs counters */
#define PROC_STALLS 1
#define PROC_STALL_NS 2

#define PREEMPT_FLAG 0x100  /* TASK_REPORT_MAX in prev_state: switched out while runnable */

struct loop_thread {
    u64 iter_start;    /* return of the epoll wait that began this iteration; 0 inside epoll_wait */
    u64 seq;           /* iterations begun: user space tells one iteration from the next */
    u64 out_at;        /* when the thread left the CPU in this iteration; 0 while on it */
    u64 blocked_ns;    /* off the CPU asleep or blocked in this iteration */
    u64 runq_ns;       /* off the CPU while runnable (preempted) in this iteration */
    u64 longest_out;   /* the longest blocked stretch so far, and its kernel stack */
    u32 tgid;
    u32 out_blocked;   /* the current stretch off the CPU is blocked (1) or preempted (0) */
    int out_kstack;
    int kstack;
};

struct stall_event {
    u64 start;
    u64 len;
    u64 blocked_ns;
    u64 runq_ns;
    u64 seq;
    u32 tgid;
    u32 tid;
    int kstack;
    u32 pad;
};

BPF_HASH(loop_threads, u32, struct loop_thread, 4096);
BPF_ARRAY(iter_hist, u64, HIST_BUCKETS);
BPF_ARRAY(totals, u64, TOT_SLOTS);
BPF_STACK_TRACE(stacks, 1024);
BPF_PERF_OUTPUT(stall_events);

static __always_inline void total_add(int slot, u64 n)
{
    u64 *c = totals.lookup(&slot);
    if (c) __sync_fetch_and_add(c, n);
}

/* The thread enters an epoll wait: its iteration in progress ends here. */
static __always_inline int on_epoll_enter(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!heimdall_tgid_is_target(tgid))
        return 0;
    struct loop_thread *t = loop_threads.lookup(&tid);
    if (!t || t->tgid != tgid || !t->iter_start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 len = now - t->iter_start;
    if (heimdall_enabled()) {
        iter_hist.atomic_increment(hist_key(0, len));
        total_add(TOT_ITERATIONS, 1);
        heimdall_proc_add(tgid, PROC_ITERATIONS, 1);
        if (len >= THRESHOLD_NS) {
            struct stall_event ev = {};
            ev.start = t->iter_start;
            ev.len = len;
            ev.blocked_ns = t->blocked_ns;
            ev.runq_ns = t->runq_ns;
            ev.seq = t->seq;
            ev.tgid = tgid;
            ev.tid = tid;
            ev.kstack = t->longest_out ? t->kstack : -1;
            total_add(TOT_STALLS, 1);
            total_add(TOT_STALL_NS, len);
            heimdall_proc_add(tgid, PROC_STALLS, 1);
            heimdall_proc_add(tgid, PROC_STALL_NS, len);
            stall_events.perf_submit(ctx, &ev, sizeof(ev));
        }
    }
    t->iter_start = 0;
    return 0;
}

/* An epoll wait returned: a new iteration begins (the thread is a loop thread from now on). */
static __always_inline int on_epoll_exit(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!heimdall_tgid_is_target(tgid))
        return 0;
    struct loop_thread zero = {};
    struct loop_thread *t = loop_threads.lookup_or_try_init(&tid, &zero);
    if (!t) {
        heimdall_lose(LOST_MAP_FULL);
        return 0;
    }
    t->tgid = tgid;
    t->iter_start = bpf_ktime_get_ns();
    t->seq += 1;
    t->out_at = 0;
    t->blocked_ns = 0;
    t->runq_ns = 0;
    t->longest_out = 0;
    t->kstack = -1;
    return 0;
}

#include "epoll_hooks.bpf.h"

/* Off-CPU time inside an iteration: only loop threads (in loop_threads) mid-iteration count. */
TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid, next = args->next_pid;
    struct loop_thread *t = loop_threads.lookup(&prev);
    if (t && t->iter_start && t->tgid == (u32)(bpf_get_current_pid_tgid() >> 32)) {
        long state = args->prev_state;
        t->out_at = now;
        t->out_blocked = (state & PREEMPT_FLAG) || state == 0 ? 0 : 1;
        t->out_kstack = t->out_blocked ? heimdall_stack_check(stacks.get_stackid(args, 0)) : -1;
    }
    struct loop_thread *n = loop_threads.lookup(&next);
    if (n && n->iter_start && n->out_at) {
        u64 off = now - n->out_at;
        if (n->out_blocked) {
            n->blocked_ns += off;
            if (off > n->longest_out) {
                n->longest_out = off;
                n->kstack = n->out_kstack;
            }
        } else {
            n->runq_ns += off;
        }
        n->out_at = 0;
    }
    return 0;
}
