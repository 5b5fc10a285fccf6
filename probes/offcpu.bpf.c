/* offcpu: time the threads of a process tree spend off the CPU, by thread and kernel stack.
 *
 * sched:sched_switch: when a watched thread leaves the CPU we note the time,
 * its kernel stack (why it left: the path into schedule()) and its state
 * (prev_state: runnable = preempted, S = asleep, D = uninterruptible); when
 * it comes back the time away is added to off_stats under (thread, stack,
 * state), split at its sched:sched_wakeup into blocked time and the wait for
 * a CPU after the wake-up. A thread that leaves the CPU inside an epoll wait
 * is an idle event loop, not a stalled one: that time goes to idle_ns only
 * (in_epoll, kept by the epoll syscall tracepoints).
 * Switch-outs are recorded from attach on, so a stretch that began before
 * the window counts from the window's start (win_start[0], set by
 * offcpu.py); a stretch that ends in the window is added here, one still
 * running when it closes is added by offcpu.py from off_start (`back_at`:
 * when a thread came back while the window was closed; 0 while still off).
 * An exiting thread's last switch-out (prev_state Z or X) is not a stretch.
 */
#include "common.bpf.h"

#define PREEMPT_FLAG 0x100  /* TASK_REPORT_MAX in prev_state: switched out while runnable */
#define EXIT_STATES 0x30    /* prev_state X (0x10) or Z (0x20): the thread's final switch-out */
#define ST_RUNNABLE 0
#define ST_SLEEPING 1
#define ST_DISK 2
#define ST_OTHER 3

#define PROC_OFFCPU_NS 0    /* heimdall_procs counters */
#define PROC_SWITCHES 1
#define PROC_IDLE_NS 2

struct off_start {
    u64 ts;
    u64 woken;        /* sched_wakeup time, 0 until woken */
    u64 back_at;      /* switched in while the window was closed (0: still off the CPU) */
    u32 tgid;
    u32 state;
    int kstack;
    u32 idle;         /* left the CPU inside an epoll wait */
};

struct off_key {
    u32 tgid;
    u32 tid;
    int kstack;
    u32 state;
};

struct off_val {
    u64 total_ns;
    u64 blocked_ns;   /* switch-out to wake-up */
    u64 runq_ns;      /* wake-up (or preemption) to switch-in */
    u64 count;
    u64 max_ns;
};

struct thread_val {
    u64 offcpu_ns;
    u64 idle_ns;
    u64 switches;
    u64 idle_waits;
    u32 tgid;
    char comm[16];
};

BPF_HASH(off_start, u32, struct off_start, 10240);
BPF_HASH(in_epoll, u32, u32, 10240);
BPF_HASH(off_stats, struct off_key, struct off_val, 16384);
BPF_HASH(threads, u32, struct thread_val, 4096);
BPF_ARRAY(win_start, u64, 1);
BPF_ARRAY(off_hist, u64, HIST_BUCKETS * 2);   /* slot 0: off-CPU stretches, 1: idle epoll waits (ns) */
BPF_STACK_TRACE(stacks, 8192);

static __always_inline int on_epoll_enter(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!heimdall_tgid_is_target(id >> 32))
        return 0;
    u32 tid = (u32)id, one = 1;
    if (in_epoll.update(&tid, &one) != 0)
        heimdall_lose(LOST_MAP_FULL);
    return 0;
}

static __always_inline int on_epoll_exit(void *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    in_epoll.delete(&tid);
    return 0;
}

#include "epoll_hooks.bpf.h"

static __always_inline u32 state_class(long state)
{
    if ((state & PREEMPT_FLAG) || state == 0) return ST_RUNNABLE;
    if (state & 1) return ST_SLEEPING;
    if (state & 2) return ST_DISK;
    return ST_OTHER;
}

static __always_inline void switch_out(void *ctx, u32 tid, long prev_state, u64 now)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!tid || !heimdall_tgid_is_target(tgid))
        return;
    if (prev_state & EXIT_STATES) {
        off_start.delete(&tid);
        return;
    }
    struct off_start s = {};
    s.ts = now;
    s.tgid = tgid;
    s.state = state_class(prev_state);
    s.idle = in_epoll.lookup(&tid) != 0;
    s.kstack = s.idle ? -1 : heimdall_stack_check(stacks.get_stackid(ctx, 0));
    if (off_start.update(&tid, &s) != 0)
        heimdall_lose(LOST_MAP_FULL);
}

static __always_inline void add_thread(u32 tid, struct off_start *s, u64 delta)
{
    struct thread_val zero = {.tgid = s->tgid};
    struct thread_val *t = threads.lookup_or_try_init(&tid, &zero);
    if (!t) {
        heimdall_lose(LOST_MAP_FULL);
        return;
    }
    if (s->idle) {
        t->idle_ns += delta;
        t->idle_waits += 1;
    } else {
        t->offcpu_ns += delta;
        t->switches += 1;
    }
}

static __always_inline void switch_in(u32 tid, u64 now, char *comm)
{
    struct off_start *s = off_start.lookup(&tid);
    if (!s)
        return;
    if (!heimdall_enabled()) {
        if (!s->back_at)
            s->back_at = now;
        return;
    }
    int zero_key = 0;
    u64 *win = win_start.lookup(&zero_key);
    u64 begin = win && *win > s->ts ? *win : s->ts;
    u64 delta = now - begin;
    add_thread(tid, s, delta);
    struct thread_val *t = threads.lookup(&tid);
    if (t)
        bpf_probe_read_kernel(&t->comm, sizeof(t->comm), comm);
    if (s->idle) {
        off_hist.atomic_increment(hist_key(1, delta));
        heimdall_proc_add(s->tgid, PROC_IDLE_NS, delta);
    } else {
        struct off_key k = {.tgid = s->tgid, .tid = tid, .kstack = s->kstack, .state = s->state};
        struct off_val zero = {};
        struct off_val *v = off_stats.lookup_or_try_init(&k, &zero);
        if (v) {
            u64 woke = s->woken && s->woken >= begin ? s->woken : begin;
            v->total_ns += delta;
            v->blocked_ns += woke - begin;
            v->runq_ns += now - woke;
            v->count += 1;
            if (delta > v->max_ns) v->max_ns = delta;
        } else {
            heimdall_lose(LOST_MAP_FULL);
        }
        off_hist.atomic_increment(hist_key(0, delta));
        heimdall_proc_add(s->tgid, PROC_OFFCPU_NS, delta);
        heimdall_proc_add(s->tgid, PROC_SWITCHES, 1);
    }
    off_start.delete(&tid);
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    switch_out(args, args->prev_pid, args->prev_state, now);
    switch_in(args->next_pid, now, args->next_comm);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    u32 tid = args->pid;
    struct off_start *s = off_start.lookup(&tid);
    if (s && !s->woken)
        s->woken = bpf_ktime_get_ns();
    return 0;
}
