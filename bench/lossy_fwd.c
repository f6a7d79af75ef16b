// An impairing layer-2 forwarder for bench/lossy.sh: every frame that arrives on one interface
// goes out of the other (AF_PACKET, promiscuous: a two-port bridge in user space), except that,
// with a seeded generator, LOSS % are dropped, CORRUPT % dropped as damaged (the receiver's
// checksum would drop them; flipping a bit would make kernel TCP's and wyvern's checks do the
// same work), DUP % sent twice, and REORDER % held back until 1-3 later frames of the same
// direction have passed, at most 2 ms. Both directions, one thread, nonblocking sockets.
//
//   cc -O2 -o lossy_fwd bench/lossy_fwd.c
//   lossy_fwd IF_A IF_B LOSS REORDER DUP CORRUPT SEED SECS
//
// Runs at most SECS seconds (or until SIGTERM/SIGINT), then prints one line of counters:
// frames in, forwarded, dropped, corrupted, duplicated, held, and the forwarding rate.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HOLD_MAX 4096
#define HOLD_NS 2000000LL
#define FRAME 2048

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

static uint64_t rng;
static uint64_t next_rand(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return rng >> 33;
}
static int chance(unsigned pct) { return next_rand() % 100 < pct; }

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

struct held {
    int64_t deadline;
    int behind; // later frames still to pass
    int out;    // socket to send on
    int len;
    unsigned char buf[FRAME];
};
static struct held hold[HOLD_MAX];
static int nheld;
static uint64_t n_in, n_fwd, n_drop, n_corrupt, n_dup, n_held;

static int open_if(const char *name) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) { perror("socket"); exit(1); }
    int idx = (int)if_nametoindex(name);
    if (!idx) { fprintf(stderr, "lossy_fwd: no interface %s\n", name); exit(1); }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = idx;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); exit(1); }
    struct packet_mreq mr = {0};
    mr.mr_ifindex = idx;
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) { perror("promisc"); exit(1); }
    int sz = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof sz);
    return fd;
}

static void out(int fd, const unsigned char *b, int len) {
    // A full send buffer drops the frame, as a full switch queue would.
    if (send(fd, b, (size_t)len, MSG_DONTWAIT) == len) n_fwd++;
    else n_drop++;
}

static void release_at(int i) {
    out(hold[i].out, hold[i].buf, hold[i].len);
    hold[i] = hold[--nheld];
}

// A frame passed towards `fd`: those held for that direction have one fewer to wait for.
static void passed(int fd) {
    for (int i = 0; i < nheld;) {
        if (hold[i].out == fd && --hold[i].behind <= 0) release_at(i);
        else i++;
    }
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: lossy_fwd IF_A IF_B LOSS REORDER DUP CORRUPT SEED SECS\n");
        return 2;
    }
    unsigned loss = (unsigned)atoi(argv[3]), reorder = (unsigned)atoi(argv[4]);
    unsigned dup = (unsigned)atoi(argv[5]), corrupt = (unsigned)atoi(argv[6]);
    rng = strtoull(argv[7], 0, 10);
    int64_t start = now_ns(), end = start + (int64_t)atoi(argv[8]) * 1000000000LL;
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    int fd[2] = {open_if(argv[1]), open_if(argv[2])};
    struct pollfd p[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};
    unsigned char buf[FRAME];
    int64_t first = 0, last = 0;
    while (!stop) {
        int64_t now = now_ns();
        if (now >= end) break;
        for (int i = 0; i < nheld;) {
            if (hold[i].deadline <= now) release_at(i);
            else i++;
        }
        int64_t wait = 1000000; // 1 ms at most
        for (int i = 0; i < nheld; i++)
            if (hold[i].deadline - now < wait) wait = hold[i].deadline - now;
        if (wait < 0) wait = 0;
        struct timespec ts = {0, (long)wait};
        if (ppoll(p, 2, &ts, 0) < 0 && errno != EINTR) { perror("ppoll"); return 1; }
        for (int d = 0; d < 2; d++) {
            if (!(p[d].revents & POLLIN)) continue;
            int to = fd[1 - d];
            for (int burst = 0; burst < 64; burst++) {
                struct sockaddr_ll from;
                socklen_t fl = sizeof from;
                ssize_t n = recvfrom(fd[d], buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
                if (n <= 0) break;
                if (from.sll_pkttype == PACKET_OUTGOING) continue; // our own sends
                n_in++;
                last = now_ns();
                if (!first) first = last;
                if (chance(loss)) { n_drop++; continue; }
                if (chance(corrupt)) { n_corrupt++; continue; }
                if (chance(dup)) { n_dup++; out(to, buf, (int)n); }
                if (chance(reorder) && nheld < HOLD_MAX) {
                    struct held *h = &hold[nheld++];
                    h->deadline = last + HOLD_NS;
                    h->behind = 1 + (int)(next_rand() % 3);
                    h->out = to;
                    h->len = (int)n;
                    memcpy(h->buf, buf, (size_t)n);
                    n_held++;
                    continue;
                }
                out(to, buf, (int)n);
                passed(to);
            }
        }
    }
    while (nheld) release_at(0);
    double secs = first && last > first ? (double)(last - first) / 1e9 : 0;
    printf("frames_in %llu forwarded %llu dropped %llu corrupted %llu duplicated %llu held %llu "
           "busy_secs %.3f frames_per_s %.0f\n",
           (unsigned long long)n_in, (unsigned long long)n_fwd, (unsigned long long)n_drop,
           (unsigned long long)n_corrupt, (unsigned long long)n_dup, (unsigned long long)n_held,
           secs, secs > 0 ? (double)n_in / secs : 0.0);
    return 0;
}
