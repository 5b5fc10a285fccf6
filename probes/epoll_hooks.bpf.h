/* The epoll wait syscalls as two hooks: a probe defines
 *   static int on_epoll_enter(void *ctx);  static int on_epoll_exit(void *ctx);
 * before including this header, and gets them called on entry to and return
 * from every epoll wait of any thread (the probe filters by process tree).
 * epoll_pwait exists everywhere; epoll_wait is absent on arm64 (glibc's
 * epoll_wait() is epoll_pwait there) and epoll_pwait2 came with Linux 5.11:
 * compile with -DHAVE_EPOLL_WAIT / -DHAVE_EPOLL_PWAIT2 when the tracepoints exist.
 */
#ifndef HEIMDALL_EPOLL_HOOKS_BPF_H
#define HEIMDALL_EPOLL_HOOKS_BPF_H

#include <linux/signal.h>   /* sigset_t, in the epoll_pwait tracepoints' arguments */

TRACEPOINT_PROBE(syscalls, sys_enter_epoll_pwait) { return on_epoll_enter(args); }
TRACEPOINT_PROBE(syscalls, sys_exit_epoll_pwait) { return on_epoll_exit(args); }
#ifdef HAVE_EPOLL_WAIT
TRACEPOINT_PROBE(syscalls, sys_enter_epoll_wait) { return on_epoll_enter(args); }
TRACEPOINT_PROBE(syscalls, sys_exit_epoll_wait) { return on_epoll_exit(args); }
#endif
#ifdef HAVE_EPOLL_PWAIT2
TRACEPOINT_PROBE(syscalls, sys_enter_epoll_pwait2) { return on_epoll_enter(args); }
TRACEPOINT_PROBE(syscalls, sys_exit_epoll_pwait2) { return on_epoll_exit(args); }
#endif

#endif
