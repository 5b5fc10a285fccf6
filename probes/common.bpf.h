/* Pieces every Heimdall probe shares: the process-tree filter, the window
 * flag, loss counters and per-process counters.
 *
 * The target is a process tree. heimdall_targets holds the tgids to watch:
 * probes/base.py seeds it with the given pid and all its descendants when it
 * attaches; task:task_newtask adds every process (not thread: CLONE_THREAD)
 * that a target forks, before the child first runs, so workers started or
 * restarted later are watched from their first instruction;
 * sched:sched_process_exit removes a target once its last thread exits (a
 * recycled pid is never watched by mistake). A fork that finds the map full
 * counts in heimdall_lost (map_full) and that child is not watched.
 * The measuring window is an in-kernel flag (heimdall_ctl[0]) that Python sets
 * after warm-up and clears before reading, so warm-up and read-out never count.
 * heimdall_lost counts what a probe had to drop (map full, stack errors): the
 * indices are the LOST_* constants below and base.py reports them all.
 * heimdall_procs holds per-process figures for the window: PROC_SLOTS
 * counters whose meaning each probe defines, and the process name.
 * Compiled with [-DHAVE_EXIT_GROUP_DEAD] when sched_process_exit says whether
 * the whole thread group is gone; without it the group leader's exit counts.
 */
#ifndef HEIMDALL_COMMON_BPF_H
#define HEIMDALL_COMMON_BPF_H

#include "histogram.bpf.h"

#define LOST_MAP_FULL   0   /* an update into a full hash map failed */
#define LOST_STACK_EEXIST 1 /* stack id hash collision (-EEXIST) */
#define LOST_STACK_ENOMEM 2 /* stack map full (-ENOMEM) */
#define LOST_STACK_OTHER 3  /* any other stack error (e.g. -EFAULT) */
#define LOST_NO_START   4   /* an exit without a recorded start */
#define LOST_SLOTS      8

#define TARGETS_MAX 1024             /* processes watched at once */
#define PROC_SLOTS 4
#define HEIMDALL_CLONE_THREAD 0x00010000ULL

struct heimdall_proc {
    u64 c[PROC_SLOTS];
    char comm[16];
};

BPF_ARRAY(heimdall_ctl, u64, 2);
BPF_ARRAY(heimdall_lost, u64, LOST_SLOTS);
BPF_HASH(heimdall_targets, u32, u64, TARGETS_MAX);   /* tgid -> fork time (ns; 0: there at attach) */
BPF_HASH(heimdall_procs, u32, struct heimdall_proc, TARGETS_MAX);

static __always_inline int heimdall_enabled(void)
{
    int zero = 0;
    u64 *on = heimdall_ctl.lookup(&zero);
    return on && *on;
}

static __always_inline int heimdall_tgid_is_target(u32 tgid)
{
    return heimdall_targets.lookup(&tgid) != 0;
}

static __always_inline int heimdall_is_target(void)
{
    return heimdall_tgid_is_target(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline void heimdall_lose(int slot)
{
    u64 *c = heimdall_lost.lookup(&slot);
    if (c) __sync_fetch_and_add(c, 1);
}

/* Add n to counter `slot` of process tgid (its entry is made on first use). */
static __always_inline void heimdall_proc_add(u32 tgid, int slot, u64 n)
{
    struct heimdall_proc zero = {};
    struct heimdall_proc *p = heimdall_procs.lookup_or_try_init(&tgid, &zero);
    if (!p) {
        heimdall_lose(LOST_MAP_FULL);
        return;
    }
    if (slot >= 0 && slot < PROC_SLOTS)
        __sync_fetch_and_add(&p->c[slot], n);
}

/* Record a stack id's failure in the loss counters; returns the id. */
static __always_inline int heimdall_stack_check(int id)
{
    if (id >= 0) return id;
    if (id == -17) heimdall_lose(LOST_STACK_EEXIST);
    else if (id == -12) heimdall_lose(LOST_STACK_ENOMEM);
    else heimdall_lose(LOST_STACK_OTHER);
    return id;
}

/* A target forked a process: watch it too (current is the parent). */
TRACEPOINT_PROBE(task, task_newtask)
{
    if (args->clone_flags & HEIMDALL_CLONE_THREAD)
        return 0;
    if (!heimdall_is_target())
        return 0;
    u32 child = args->pid;
    u64 now = bpf_ktime_get_ns();
    if (heimdall_targets.update(&child, &now) != 0) {
        heimdall_lose(LOST_MAP_FULL);
        return 0;
    }
    struct heimdall_proc p = {};
    bpf_probe_read_kernel(&p.comm, sizeof(p.comm), args->comm);
    int err = heimdall_procs.insert(&child, &p);   /* keeps an entry a recycled pid made */
    if (err != 0 && err != -17)
        heimdall_lose(LOST_MAP_FULL);
    return 0;
}

/* A target's last thread exited: stop watching its pid; keep its final name. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
#ifdef HAVE_EXIT_GROUP_DEAD
    if (!args->group_dead)
        return 0;
#else
    if ((u32)id != tgid)
        return 0;
#endif
    if (!heimdall_targets.lookup(&tgid))
        return 0;
    heimdall_targets.delete(&tgid);
    struct heimdall_proc *p = heimdall_procs.lookup(&tgid);
    if (p)
        bpf_probe_read_kernel(&p->comm, sizeof(p->comm), args->comm);
    return 0;
}

#endif
