/* memprof's truth: exactly N malloc calls of known sizes, then N frees.
 *
 * Usage: malloc_n N BASE. Prints "ready <pid>", waits for a line on stdin
 * (the probe attaches first), calls malloc N times with sizes
 * BASE + (i % 7) * 16, frees them, prints "mallocs N", "bytes <sum>",
 * "frees N", "done", then waits for another line before exiting.
 * Usage: malloc_n bench ITERS: times ITERS malloc+free pairs in CPU time, printing
 * "ns_per_pair <ns>" for each line read on stdin until EOF (the cost loop
 * used to measure what a uprobe adds to each call).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);  /* CPU time: the uprobes' cost, not the neighbours' */
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int bench(long iters)
{
    char line[64];
    void *volatile keep;
    while (fgets(line, sizeof line, stdin)) {
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            keep = malloc(64);
            free(keep);
        }
        printf("ns_per_pair %.1f\n", (now_ns() - t0) / iters);
    }
    return 0;
}

int main(int argc, char **argv)
{
    char line[64];
    if (argc != 3) { fprintf(stderr, "usage: malloc_n N BASE | malloc_n bench ITERS\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "bench") == 0) {
        printf("ready %d\n", getpid());
        return bench(atol(argv[2]));
    }
    long n = atol(argv[1]), base = atol(argv[2]);
    void **ptrs = calloc(n, sizeof(void *));
    if (!ptrs) return 2;
    printf("ready %d\n", getpid());
    if (!fgets(line, sizeof line, stdin)) return 2;
    unsigned long long bytes = 0;
    for (long i = 0; i < n; i++) {
        size_t size = base + (i % 7) * 16;
        ptrs[i] = malloc(size);
        bytes += size;
    }
    for (long i = 0; i < n; i++)
        free(ptrs[i]);
    printf("mallocs %ld\nbytes %llu\nfrees %ld\ndone\n", n, bytes, n);
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
