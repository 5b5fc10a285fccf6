/* cpuprof --native: timed on-CPU stack sampling of a process tree (like bcc's
 * profile), for the native and kernel frames py-spy cannot see.
 *
 * A software CPU clock perf event on every CPU runs on_sample; we keep only
 * samples of the watched processes inside the window and count them by
 * (process, thread name, user stack, kernel stack); per process, samples
 * (heimdall_procs). A sample taken in user mode has no kernel stack
 * (-EFAULT): that is normal, not a loss. The pyenv CPython here has no frame
 * pointers, so user stacks end after one or two frames (see cpuprof.py).
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "common.bpf.h"

#define PROC_SAMPLES 0     /* heimdall_procs counter */

struct cpu_key {
    int ustack;
    int kstack;
    char comm[16];
    u32 tgid;          /* its maps symbolize the user stack */
    u32 pad;
};

BPF_HASH(cpu_counts, struct cpu_key, u64, 16384);
BPF_STACK_TRACE(cpu_stacks, 16384);

int on_sample(struct bpf_perf_event_data *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!heimdall_tgid_is_target(tgid) || !heimdall_enabled())
        return 0;
    struct cpu_key key = {};
    key.tgid = tgid;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    key.ustack = heimdall_stack_check(cpu_stacks.get_stackid(&ctx->regs, BPF_F_USER_STACK));
    int k = cpu_stacks.get_stackid(&ctx->regs, 0);
    key.kstack = k == -14 ? -1 : heimdall_stack_check(k);   /* -EFAULT: user mode */
    u64 zero = 0;
    u64 *c = cpu_counts.lookup_or_try_init(&key, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);
    else
        heimdall_lose(LOST_MAP_FULL);
    heimdall_proc_add(tgid, PROC_SAMPLES, 1);
    return 0;
}
