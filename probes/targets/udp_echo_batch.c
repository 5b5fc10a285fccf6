/* netprof truth target: a batching UDP echo server with a known service time.
 *
 * usage: udp_echo_batch TOTAL DELAY_MS [PORT]
 * Prints "PORT <n>", then until TOTAL datagrams were answered: recvmmsg (up
 * to 16, MSG_WAITFORONE), sleep DELAY_MS (the "processing"), sendmmsg one
 * reply per datagram back to its sender, print "BATCH <received> <sent>".
 * Truth for netprof: recvmmsg/sendmmsg calls = BATCH lines, datagrams per call
 * as printed, and server time (last read -> first send) about DELAY_MS per batch.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define VLEN 16

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOTAL DELAY_MS [PORT]\n", argv[0]);
        return 2;
    }
    int total = atoi(argv[1]);
    long delay_ms = atol(argv[2]);
    int port = argc > 3 ? atoi(argv[3]) : 0;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
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

    static char bufs[VLEN][512];
    struct iovec iov[VLEN];
    struct sockaddr_in peers[VLEN];
    struct mmsghdr msgs[VLEN];
    int answered = 0;
    while (answered < total) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < VLEN; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof(bufs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(peers[i]);
        }
        int n = recvmmsg(fd, msgs, VLEN, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            perror("recvmmsg");
            return 1;
        }
        struct timespec ts = { delay_ms / 1000, (delay_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
        for (int i = 0; i < n; i++)
            iov[i].iov_len = msgs[i].msg_len;   /* echo what came in */
        int sent = sendmmsg(fd, msgs, n, 0);
        printf("BATCH %d %d\n", n, sent);
        fflush(stdout);
        answered += n;
    }
    close(fd);
    return 0;
}
