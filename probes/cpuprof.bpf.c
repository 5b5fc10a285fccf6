/* cpuprof --native: timed on-CPU stack sampling of one process (like bcc's
 * profile), for the native and kernel frames py-spy cannot see.
 *
 * A software CPU clock perf event on every CPU runs on_sample; we keep only
 * samples of TARGET_TGID inside the window and count them by (thread name,
 * user stack, kernel stack). A sample taken in user mode has no kernel stack
 * (-EFAULT): that is normal, not a loss. The pyenv CPython here has no frame
 * pointers, so user stacks end after one or two frames (see cpuprof.py).
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "common.bpf.h"

struct cpu_key {
    int ustack;
    int kstack;
    char comm[16];
};

BPF_HASH(cpu_counts, struct cpu_key, u64, 16384);
BPF_STACK_TRACE(cpu_stacks, 16384);

int on_sample(struct bpf_perf_event_data *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID || !heimdall_enabled())
        return 0;
    struct cpu_key key = {};
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
    return 0;
}
