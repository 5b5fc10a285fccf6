/* netprof truth target: a UDP receiver that lets a burst queue up, then drains
 * it slowly, and measures each datagram's queue wait itself.
 *
 * usage: udp_slow_drain BURST DELAY_MS [PORT]
 * Prints "PORT <n>" once bound, then waits for a line on stdin (the test sends
 * the burst first; each datagram carries its CLOCK_MONOTONIC send time in ns as
 * 8 bytes). It then reads BURST datagrams, one every DELAY_MS, printing
 * "WAIT <i> <wait_us>" per datagram (read time minus send time) and "DONE <n>".
 * The i-th datagram therefore waits about i*DELAY_MS plus the time to "go".
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s BURST DELAY_MS [PORT]\n", argv[0]);
        return 2;
    }
    int burst = atoi(argv[1]);
    long delay_ms = atol(argv[2]);
    int port = argc > 3 ? atoi(argv[3]) : 0;

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int big = 4 << 20; /* room for the whole burst: no drops in this target */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("bind");
        return 1;
    }
    socklen_t len = sizeof(addr);
    getsockname(fd, (struct sockaddr *)&addr, &len);
    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    char line[64];
    if (!fgets(line, sizeof(line), stdin))
        return 1;

    for (int i = 0; i < burst; i++) {
        unsigned char buf[512];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        uint64_t t = now_ns();
        uint64_t sent = 0;
        if (n >= 8)
            memcpy(&sent, buf, 8);
        printf("WAIT %d %.1f\n", i, sent ? (double)(t - sent) / 1000.0 : -1.0);
        fflush(stdout);
        if (i + 1 < burst)
            sleep_ms(delay_ms);
    }
    printf("DONE %d\n", burst);
    fflush(stdout);
    close(fd);
    return 0;
}
