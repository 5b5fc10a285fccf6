/* memprof --outstanding's truth: exactly N blocks of S bytes left allocated,
 * everything else freed, some of it allocated before the window opened.
 *
 * Usage: leak_n N S [SECONDS]. Before "ready <pid>" it allocates N blocks of
 * 4096 bytes (older than any window). On the go line it, N times: leaks one
 * block of S bytes (even i: malloc(S/2) grown by realloc to S; odd i:
 * posix_memalign(64, S)), allocates and frees a calloc'd block grown by
 * realloc, a posix_memalign block and an aligned_alloc block, and frees one
 * of the blocks from before the window. With SECONDS the N rounds are spread
 * evenly over that time (a steady leak of about N*S/SECONDS bytes/s). Prints
 * "leaked N", "bytes N*S", "seconds <the rounds' monotonic time>", "done",
 * then waits for a line before exiting.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *volatile sink;

static void *leak_one(long i, size_t size)
{
    void *p = NULL;
    if (i % 2 == 0) {
        p = malloc(size / 2);
        p = realloc(p, size);
    } else if (posix_memalign(&p, 64, size) != 0) {
        p = NULL;
    }
    if (p) memset(p, 1, size);
    return p;
}

static void churn(size_t size)
{
    void *q = calloc(1, 3 * size);
    q = realloc(q, 5 * size);
    free(q);
    void *a = NULL;
    if (posix_memalign(&a, 64, 2 * size) == 0) free(a);
    void *b = aligned_alloc(64, 256);
    sink = b;
    free(b);
}

int main(int argc, char **argv)
{
    char line[64];
    if (argc < 3 || argc > 4) { fprintf(stderr, "usage: leak_n N S [SECONDS]\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    long n = atol(argv[1]);
    size_t size = (size_t)atol(argv[2]);
    double seconds = argc == 4 ? atof(argv[3]) : 0.0;
    void **old = calloc(n, sizeof(void *));
    void **kept = calloc(n, sizeof(void *));
    if (!old || !kept) return 2;
    for (long i = 0; i < n; i++)
        old[i] = malloc(4096);
    printf("ready %d\n", getpid());
    if (!fgets(line, sizeof line, stdin)) return 2;
    struct timespec gap = {0, 0};
    if (seconds > 0) {
        double each = seconds / n;
        gap.tv_sec = (time_t)each;
        gap.tv_nsec = (long)((each - gap.tv_sec) * 1e9);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        kept[i] = leak_one(i, size);
        churn(size);
        free(old[i]);
        if (seconds > 0) nanosleep(&gap, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("leaked %ld\nbytes %llu\nseconds %.6f\ndone\n", n, (unsigned long long)n * size,
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
