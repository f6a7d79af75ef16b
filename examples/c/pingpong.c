/*
 * pingpong: round trips between two processes through their nodes' wyvern agents.
 *
 *   pingpong SOCKET pong                          # echo every message back, until an empty one
 *   pingpong SOCKET ping PEER_NODE [ROUNDS] [SIZE]  # send, wait for the echo, check it, time it
 *
 * Both sides use endpoint 1. Build (see docs/api.md, "C"):
 *   cc -O2 -o pingpong pingpong.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs wyvern)
 */
#define _POSIX_C_SOURCE 200809L
#include <wyvern.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EP 1
#define TIMEOUT_US 10000000 /* 10 s */

/* Print what failed, with the library's detail, and leave. */
static void die(const char *what, int rc) {
    fprintf(stderr, "pingpong: %s: %s (%s)\n", what, wyvern_strerror(rc), wyvern_last_error());
    exit(1);
}

static int pong(wyvern_endpoint *ep) {
    unsigned long echoed = 0;
    for (;;) {
        wyvern_msg *m;
        int rc = wyvern_recv_zc(ep, &m, WYVERN_FOREVER);
        if (rc != WYVERN_OK) die("receive", rc);
        uint32_t node, src;
        wyvern_msg_src(m, &node, &src);
        int64_t len = wyvern_msg_len(m);
        if (len == 0) { /* the end */
            wyvern_msg_release(m);
            break;
        }
        /* Zero-copy in: echo straight from the received block, then give it back. */
        rc = wyvern_send(ep, node, src, wyvern_msg_data(m), (size_t)len, WYVERN_BUFFERED,
                         TIMEOUT_US);
        wyvern_msg_release(m);
        if (rc != WYVERN_OK) die("echo", rc);
        echoed++;
    }
    printf("pong: echoed %lu messages\n", echoed);
    return 0;
}

static int ping(wyvern_endpoint *ep, uint32_t peer, unsigned rounds, size_t size) {
    uint8_t *out = malloc(size ? size : 1), *in = malloc(size ? size : 1);
    if (!out || !in) return 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned r = 0; r < rounds; r++) {
        for (size_t i = 0; i < size; i++) out[i] = (uint8_t)(i + r);
        int rc = wyvern_send(ep, peer, EP, out, size, WYVERN_BUFFERED, TIMEOUT_US);
        if (rc != WYVERN_OK) die("send", rc);
        size_t len;
        rc = wyvern_recv(ep, in, size, &len, TIMEOUT_US);
        if (rc != WYVERN_OK) die("receive", rc);
        if (len != size || memcmp(in, out, size) != 0) {
            fprintf(stderr, "pingpong: round %u: echo differs\n", r);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 1e3;
    /* An empty message tells the pong side to stop. */
    int rc = wyvern_send(ep, peer, EP, NULL, 0, WYVERN_DELIVERED, TIMEOUT_US);
    if (rc != WYVERN_OK) die("stop", rc);
    printf("ping: %u round trips of %zu bytes, %.1f us each\n", rounds, size,
           rounds ? us / rounds : 0.0);
    free(out);
    free(in);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[2], "ping") == 0 && argc < 4)) {
        fprintf(stderr, "usage: %s SOCKET pong | SOCKET ping PEER_NODE [ROUNDS] [SIZE]\n", argv[0]);
        return 2;
    }
    wyvern_client *client;
    int rc = wyvern_attach(argv[1], "pingpong", &client);
    if (rc != WYVERN_OK) die("attach", rc);
    wyvern_endpoint *ep;
    rc = wyvern_endpoint_open(client, EP, &ep);
    if (rc != WYVERN_OK) die("open endpoint", rc);
    printf("ready\n");
    fflush(stdout);
    int status;
    if (strcmp(argv[2], "pong") == 0) {
        status = pong(ep);
    } else {
        unsigned rounds = argc > 4 ? (unsigned)strtoul(argv[4], NULL, 10) : 1000;
        size_t size = argc > 5 ? (size_t)strtoull(argv[5], NULL, 10) : 64;
        status = ping(ep, (uint32_t)strtoul(argv[3], NULL, 10), rounds, size);
    }
    wyvern_detach(client); /* closes the endpoint too */
    return status;
}
