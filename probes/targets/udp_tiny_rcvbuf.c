/* netprof truth target: a UDP receiver with the smallest receive buffer the
 * kernel allows, so most of a burst is dropped at the socket.
 *
 * usage: udp_tiny_rcvbuf [PORT]
 * Prints "PORT <n>" and "RCVBUF <bytes>" once bound, waits for a line on stdin
 * (the test sends its M datagrams first), then reads without blocking until
 * the queue is empty and prints "RECEIVED <n>". Drops are M - n, exactly.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int tiny = 1; /* the kernel clamps this up to its minimum (SOCK_MIN_RCVBUF) */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &tiny, sizeof(tiny));
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("bind");
        return 1;
    }
    socklen_t len = sizeof(addr);
    getsockname(fd, (struct sockaddr *)&addr, &len);
    int rcvbuf = 0;
    len = sizeof(rcvbuf);
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len);
    printf("PORT %d\nRCVBUF %d\n", ntohs(addr.sin_port), rcvbuf);
    fflush(stdout);

    char line[64];
    if (!fgets(line, sizeof(line), stdin))
        return 1;

    int received = 0;
    for (;;) {
        char buf[2048];
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: the queue is empty */
        }
        received++;
    }
    printf("RECEIVED %d\n", received);
    fflush(stdout);
    close(fd);
    return 0;
}
