/* Pieces every Heimdall probe shares: the target filter and the window flag.
 *
 * TARGET_TGID is passed with -D by probes/base.py. The measuring window is an
 * in-kernel flag (heimdall_ctl[0]) that Python sets after warm-up and clears
 * before reading, so warm-up and read-out never count.
 * heimdall_lost counts what a probe had to drop (map full, stack errors): the
 * indices are the LOST_* constants below and base.py reports them all.
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

BPF_ARRAY(heimdall_ctl, u64, 2);
BPF_ARRAY(heimdall_lost, u64, LOST_SLOTS);

static __always_inline int heimdall_enabled(void)
{
    int zero = 0;
    u64 *on = heimdall_ctl.lookup(&zero);
    return on && *on;
}

static __always_inline int heimdall_is_target(void)
{
    return (bpf_get_current_pid_tgid() >> 32) == TARGET_TGID;
}

static __always_inline void heimdall_lose(int slot)
{
    u64 *c = heimdall_lost.lookup(&slot);
    if (c) __sync_fetch_and_add(c, 1);
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

#endif
