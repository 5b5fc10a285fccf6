/* lockprof's truth: one thread waits on a pthread mutex exactly K times, ~T ms each.
 *
 * Usage: mutex_wait K T_MS. Prints "ready <pid>", waits for a line on stdin
 * (so the probe attaches first), runs, prints "waiter_tid <tid>",
 * "waits <K>", "wait_us_total <measured>", then waits for another line
 * before exiting (so results are read while it is alive).
 * Threads hand over with pipes, not futexes, so the waiter's only futex
 * waits are the K mutex waits (holder locks, then tells the waiter to try,
 * and unlocks only once the mutex is marked contended).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static int to_waiter[2], to_holder[2];
static int K, T_MS;
static double wait_us_total;
static long waiter_tid;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void *holder(void *arg)
{
    char c = 1;
    (void)arg;
    for (int i = 0; i < K; i++) {
        pthread_mutex_lock(&m);
        if (write(to_waiter[1], &c, 1) != 1) exit(2);
        usleep(T_MS * 1000);
        /* under load the waiter may not have reached the lock yet: hold on
         * until glibc marks the mutex contended (2), so every round is a wait */
        while (__atomic_load_n(&m.__data.__lock, __ATOMIC_ACQUIRE) != 2)
            usleep(200);
        pthread_mutex_unlock(&m);
        if (read(to_holder[0], &c, 1) != 1) exit(2);
    }
    return NULL;
}

static void *waiter(void *arg)
{
    char c = 1;
    (void)arg;
    waiter_tid = syscall(SYS_gettid);
    for (int i = 0; i < K; i++) {
        if (read(to_waiter[0], &c, 1) != 1) exit(2);
        usleep(1000);  /* let the holder be well inside its hold */
        double t0 = now_us();
        pthread_mutex_lock(&m);
        wait_us_total += now_us() - t0;
        pthread_mutex_unlock(&m);
        if (write(to_holder[1], &c, 1) != 1) exit(2);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char line[64];
    pthread_t h, w;
    if (argc != 3) { fprintf(stderr, "usage: mutex_wait K T_MS\n"); return 2; }
    K = atoi(argv[1]);
    T_MS = atoi(argv[2]);
    if (pipe(to_waiter) || pipe(to_holder)) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    if (!fgets(line, sizeof line, stdin)) return 2;
    pthread_create(&w, NULL, waiter, NULL);
    pthread_create(&h, NULL, holder, NULL);
    pthread_join(h, NULL);
    pthread_join(w, NULL);
    printf("waiter_tid %ld\nwaits %d\nwait_us_total %.1f\ndone\n", waiter_tid, K, wait_us_total);
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
