/*
 * The C API against two real agents: tests/capi.rs compiles this with cc against an
 * installed prefix (scripts/install.sh) and runs it as
 *
 *     capi_test SOCKET_OF_NODE_0 SOCKET_OF_NODE_1
 *
 * with agents started with --unknown-ep-grace-ms 200. Exits 0 and prints
 * "capi_test: N checks passed" when every check holds; else names the first failed one.
 */
#define _POSIX_C_SOURCE 200809L
#include <wyvern.h>

#include <pthread.h>
#include <stdint.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int checks;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " [last error: %s]\n", wyvern_last_error());                   \
            exit(1);                                                                       \
        }                                                                                  \
        checks++;                                                                          \
    } while (0)

#define OK(call)                                                                           \
    do {                                                                                   \
        int rc_ = (call);                                                                  \
        CHECK(rc_ == WYVERN_OK, "%s -> %d (%s)", #call, rc_, wyvern_strerror(rc_));         \
    } while (0)

/* A call that must fail with `code` and leave a detail in wyvern_last_error. */
#define FAILS(call, code)                                                                  \
    do {                                                                                   \
        int rc_ = (int)(call);                                                             \
        CHECK(rc_ == (code), "%s -> %d (%s), expected %s", #call, rc_, wyvern_strerror(rc_), \
              #code);                                                                      \
        CHECK(wyvern_last_error()[0] != '\0', "no detail for %s", #call);                  \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void fill(uint8_t *p, size_t n, unsigned salt) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 131u + salt);
}

static int intact(const uint8_t *p, size_t n, unsigned salt) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(i * 131u + salt)) return 0;
    return 1;
}

#define TIMEOUT 10000000 /* 10 s */

/* Send `size` bytes from `from` (node from_node, endpoint from_id) to `to` (node to_node,
 * endpoint to_id) and receive them there, copying (zc = 0) or zero-copy (zc = 1). */
static void exchange(wyvern_endpoint *from, uint32_t from_node, uint32_t from_id,
                     wyvern_endpoint *to, uint32_t to_node, uint32_t to_id, size_t size,
                     uint32_t mode, int zc, size_t eager_max, uint8_t *sbuf, uint8_t *rbuf) {
    unsigned salt = (unsigned)(size + 7 * from_node + 3 * mode + zc);
    fill(sbuf, size, salt);
    /* A 0-byte message may come from a NULL buffer. */
    OK(wyvern_send(from, to_node, to_id, size ? sbuf : NULL, size, mode, TIMEOUT));
    uint32_t src_node = 99, src_ep = 99;
    if (!zc) {
        size_t len = 12345;
        memset(rbuf, 0, size);
        OK(wyvern_recv_from(to, rbuf, size, &len, &src_node, &src_ep, TIMEOUT));
        CHECK(len == size, "copied %zu bytes, sent %zu", len, size);
        CHECK(intact(rbuf, size, salt), "copied message of %zu bytes corrupted", size);
    } else {
        wyvern_msg *m = NULL;
        OK(wyvern_recv_zc(to, &m, TIMEOUT));
        CHECK(wyvern_msg_len(m) == (int64_t)size, "zc length %lld, sent %zu",
              (long long)wyvern_msg_len(m), size);
        const uint8_t *d = wyvern_msg_data(m);
        CHECK(d != NULL, "zc data NULL for a valid message of %zu bytes", size);
        CHECK(intact(d, size, salt), "zero-copy message of %zu bytes corrupted", size);
        CHECK(wyvern_msg_zero_copy(m) == (size > eager_max),
              "zero_copy=%d for %zu bytes (eager_max %zu)", wyvern_msg_zero_copy(m), size,
              eager_max);
        OK(wyvern_msg_src(m, &src_node, &src_ep));
        OK(wyvern_msg_release(m));
        FAILS(wyvern_msg_release(m), WYVERN_EBADHANDLE);
        CHECK(wyvern_msg_data(m) == NULL, "data of a released message");
        FAILS(wyvern_msg_len(m), WYVERN_EBADHANDLE);
    }
    CHECK(src_node == from_node && src_ep == from_id, "source (%u,%u), expected (%u,%u)",
          src_node, src_ep, from_node, from_id);
}

struct blocked_recv {
    wyvern_endpoint *ep;
    int rc;
    double took;
};

/* wyvern_recv_many's callback: check message `next` of the batch test. */
struct batch_check {
    unsigned next;
    uint32_t src_node, src_ep;
    int bad;
};
static size_t batch_size(unsigned k) { return (k % 50 == 49) ? 100000 : 1 + k % 300; }
static void on_batch_msg(void *ctx, uint32_t src_node, uint32_t src_ep, const void *data,
                         size_t len) {
    struct batch_check *b = ctx;
    unsigned k = b->next++;
    if (src_node != b->src_node || src_ep != b->src_ep || len != batch_size(k) ||
        !intact(data, len, 1000 + k)) {
        fprintf(stderr, "batch message %u: from (%u,%u), %zu bytes\n", k, src_node, src_ep, len);
        b->bad++;
    }
}

static void *recv_in_thread(void *arg) {
    struct blocked_recv *b = arg;
    uint8_t buf[16];
    size_t len;
    double t0;
    do { /* the main thread's probe may hold the client for an instant: retry then */
        t0 = now_s();
        b->rc = wyvern_recv(b->ep, buf, sizeof buf, &len, 1000000);
    } while (b->rc == WYVERN_EBUSY);
    b->took = now_s() - t0;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET0 SOCKET1\n", argv[0]);
        return 2;
    }
    wyvern_client *a = NULL, *b = NULL;
    OK(wyvern_attach(argv[1], "capi-test-a", &a));
    OK(wyvern_attach(argv[2], NULL, &b));
    uint32_t n = 0, count = 0;
    OK(wyvern_node_id(a, &n));
    CHECK(n == 0, "a on node %u", n);
    OK(wyvern_node_id(b, &n));
    CHECK(n == 1, "b on node %u", n);
    OK(wyvern_node_count(a, &count));
    CHECK(count == 2, "node count %u", count);
    size_t eager_max = 0;
    OK(wyvern_eager_max(a, &eager_max));
    CHECK(eager_max > 0 && eager_max < (1u << 20), "eager_max %zu", eager_max);

    wyvern_endpoint *ea = NULL, *eb = NULL;
    OK(wyvern_endpoint_open(a, 7, &ea));
    OK(wyvern_endpoint_open(b, WYVERN_ANY, &eb));
    uint32_t ida = 0, idb = 0;
    OK(wyvern_endpoint_id(ea, &ida));
    OK(wyvern_endpoint_id(eb, &idb));
    CHECK(ida == 7, "endpoint id %u", ida);
    FAILS(wyvern_endpoint_open(a, 7, &ea), WYVERN_EREFUSED); /* id in use */

    /* ---- both ways, both modes, copying and zero-copy, every size class */
    size_t sizes[] = {0, 1, 100, eager_max, eager_max + 1, 65536, 1u << 20, 3u << 20};
    size_t nsizes = sizeof sizes / sizeof sizes[0];
    uint8_t *sbuf = malloc(3u << 20), *rbuf = malloc(3u << 20);
    CHECK(sbuf && rbuf, "malloc");
    for (size_t i = 0; i < nsizes; i++)
        for (uint32_t mode = WYVERN_BUFFERED; mode <= WYVERN_DELIVERED; mode++)
            for (int zc = 0; zc <= 1; zc++) {
                exchange(ea, 0, ida, eb, 1, idb, sizes[i], mode, zc, eager_max, sbuf, rbuf);
                exchange(eb, 1, idb, ea, 0, ida, sizes[i], mode, zc, eager_max, sbuf, rbuf);
            }
    /* Several in flight before any is read, in order. */
    for (unsigned k = 0; k < 20; k++) {
        size_t sz = (k % 2) ? 200000 : 10 + k;
        fill(sbuf, sz, k);
        OK(wyvern_send(ea, 1, idb, sbuf, sz, WYVERN_BUFFERED, TIMEOUT));
    }
    for (unsigned k = 0; k < 20; k++) {
        size_t sz = (k % 2) ? 200000 : 10 + k, len = 0;
        OK(wyvern_recv(eb, rbuf, 3u << 20, &len, TIMEOUT));
        CHECK(len == sz && intact(rbuf, sz, k), "message %u of a burst: %zu bytes", k, len);
    }

    /* ---- batches: 1000 messages (every 50th above eager_max) in one call, read in batches */
    {
        enum { N = 1000 };
        wyvern_out *out = calloc(N, sizeof *out);
        uint8_t *bytes = malloc((size_t)N * 100000);
        CHECK(out && bytes, "malloc");
        for (unsigned k = 0; k < N; k++) {
            uint8_t *p = bytes + (size_t)k * 100000;
            fill(p, batch_size(k), 1000 + k);
            out[k] = (wyvern_out){.dst_node = 1, .dst_ep = idb, .data = p, .len = batch_size(k)};
        }
        size_t sent = 0;
        OK(wyvern_send_many(ea, out, N, &sent, TIMEOUT));
        CHECK(sent == N, "send_many submitted %zu of %d", sent, N);
        struct batch_check bc = {.next = 0, .src_node = 0, .src_ep = ida, .bad = 0};
        unsigned calls = 0;
        while (bc.next < N && calls < 100000) {
            size_t got = 0;
            OK(wyvern_recv_many(eb, 64, on_batch_msg, &bc, &got, TIMEOUT));
            CHECK(got >= 1 && got <= 64, "recv_many gave %zu", got);
            calls++;
        }
        CHECK(bc.next == N && bc.bad == 0, "batch: %u received, %d bad", bc.next, bc.bad);
        size_t got = 7;
        FAILS(wyvern_recv_many(eb, 64, on_batch_msg, &bc, &got, 0), WYVERN_EAGAIN);
        CHECK(got == 0, "nothing waiting, yet %zu", got);
        FAILS(wyvern_recv_many(eb, 64, NULL, &bc, &got, 0), WYVERN_EINVAL);
        FAILS(wyvern_send_many(ea, NULL, 3, &sent, 0), WYVERN_EINVAL);
        out[1].data = NULL;
        FAILS(wyvern_send_many(ea, out, 3, &sent, 0), WYVERN_EINVAL);
        OK(wyvern_send_many(ea, out, 0, &sent, 0));
        CHECK(sent == 0, "an empty batch sent %zu", sent);
        free(out);
        free(bytes);
    }

    /* ---- the wait descriptor for event loops */
    {
        int fd = -1;
        OK(wyvern_wait_fd(eb, &fd));
        CHECK(fd >= 0, "wait fd %d", fd);
        /* The agent may still ring for earlier work (the frees of the batch's
           blocks): a wake-up may be spurious, but they must settle. */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int quiet = 0;
        for (int k = 0; k < 20 && !quiet; k++) {
            CHECK(wyvern_arm(eb) == 1, "armed with nothing waiting");
            quiet = poll(&p, 1, 50) == 0;
            if (!quiet)
                OK(wyvern_disarm(eb));
        }
        CHECK(quiet, "readable with nothing sent, 20 times");
        OK(wyvern_send(ea, 1, idb, "fd", 2, WYVERN_BUFFERED, TIMEOUT));
        CHECK(poll(&p, 1, 10000) == 1, "not readable after a message came");
        OK(wyvern_disarm(eb));
        CHECK(wyvern_arm(eb) == 0, "a message waits: nothing armed");
        size_t l = 0;
        OK(wyvern_recv(eb, rbuf, 16, &l, 0));
        CHECK(l == 2 && memcmp(rbuf, "fd", 2) == 0, "the message after the wait");
        FAILS(wyvern_wait_fd(eb, NULL), WYVERN_EINVAL);
    }

    /* ---- a receive buffer too small: the needed length, the message kept */
    fill(sbuf, 1000, 42);
    OK(wyvern_send(ea, 1, idb, sbuf, 1000, WYVERN_DELIVERED, TIMEOUT));
    size_t len = 0;
    FAILS(wyvern_recv(eb, rbuf, 10, &len, TIMEOUT), WYVERN_ENOSPC);
    CHECK(len == 1000, "needed length %zu", len);
    len = 0;
    FAILS(wyvern_recv(eb, NULL, 0, &len, 0), WYVERN_ENOSPC);
    CHECK(len == 1000, "needed length %zu (cap 0)", len);
    CHECK(wyvern_poll(eb) == 1, "the kept message is ready");
    OK(wyvern_recv(eb, rbuf, 1000, &len, 0));
    CHECK(len == 1000 && intact(rbuf, 1000, 42), "the kept message: %zu bytes", len);

    /* ---- poll and the two meanings of a timeout */
    CHECK(wyvern_poll(eb) == 0, "nothing ready");
    FAILS(wyvern_recv(eb, rbuf, 16, &len, 0), WYVERN_EAGAIN);
    double t0 = now_s();
    FAILS(wyvern_recv(eb, rbuf, 16, &len, 50000), WYVERN_ETIMEDOUT);
    double took = now_s() - t0;
    CHECK(took >= 0.045 && took < 20.0, "a 50 ms receive took %.3f s", took);
    OK(wyvern_send(ea, 1, idb, "hello", 5, WYVERN_DELIVERED, TIMEOUT));
    CHECK(wyvern_poll(eb) == 1, "delivered message ready");
    CHECK(wyvern_poll(eb) == 1, "still ready: poll does not consume");
    OK(wyvern_recv(eb, rbuf, 16, &len, 0));
    CHECK(len == 5 && memcmp(rbuf, "hello", 5) == 0, "poll then recv");

    /* ---- unknown endpoint (remote and local), unknown node, async errors */
    FAILS(wyvern_send(ea, 1, 999, "x", 1, WYVERN_DELIVERED, TIMEOUT), WYVERN_EUNKNOWN_ENDPOINT);
    FAILS(wyvern_send(ea, 0, 999, "x", 1, WYVERN_DELIVERED, TIMEOUT), WYVERN_EUNKNOWN_ENDPOINT);
    FAILS(wyvern_send(ea, 5, 7, "x", 1, WYVERN_DELIVERED, TIMEOUT), WYVERN_EUNKNOWN_NODE);
    wyvern_async_error ae;
    CHECK(wyvern_take_error(a, &ae) == 0, "no async error yet");
    uint64_t cookie = 0;
    OK(wyvern_send_ex(ea, 1, 998, "y", 1, WYVERN_BUFFERED, TIMEOUT, &cookie));
    int got = 0;
    for (int i = 0; i < 500 && !got; i++) {
        got = wyvern_take_error(a, &ae);
        CHECK(got >= 0, "take_error -> %d", got);
        if (!got) nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    CHECK(got == 1, "the buffered send's failure was reported");
    CHECK(ae.cookie == cookie && ae.status == WYVERN_EUNKNOWN_ENDPOINT && ae.node == WYVERN_NO_NODE,
          "async error cookie %llu (sent %llu) status %d node %u", (unsigned long long)ae.cookie,
          (unsigned long long)cookie, ae.status, ae.node);
    CHECK(wyvern_take_error(a, &ae) == 0, "reported once");

    /* ---- zero-copy send: alloc, fill in place, send_buf; the buffer is consumed */
    for (unsigned k = 0; k < 3; k++) {
        size_t sz = k == 0 ? 100 : (k == 1 ? eager_max + 1 : (size_t)3 << 20);
        wyvern_buf *zb = NULL;
        OK(wyvern_alloc(a, sz, TIMEOUT, &zb));
        CHECK(wyvern_buf_len(zb) == (int64_t)sz, "buffer of %lld bytes, asked %zu",
              (long long)wyvern_buf_len(zb), sz);
        uint8_t *zp = wyvern_buf_data(zb);
        CHECK(zp != NULL, "buffer data");
        fill(zp, sz, 300 + k);
        uint64_t zc = 0;
        OK(wyvern_send_buf(ea, 1, idb, zb, k == 2 ? WYVERN_DELIVERED : WYVERN_BUFFERED, TIMEOUT,
                           &zc));
        CHECK(zc != 0, "a cookie for the zero-copy send");
        FAILS(wyvern_buf_len(zb), WYVERN_EBADHANDLE);
        CHECK(wyvern_buf_data(zb) == NULL, "data of a sent buffer");
        FAILS(wyvern_send_buf(ea, 1, idb, zb, WYVERN_BUFFERED, TIMEOUT, NULL), WYVERN_EBADHANDLE);
        wyvern_msg *zm = NULL;
        OK(wyvern_recv_zc(eb, &zm, TIMEOUT));
        CHECK(wyvern_msg_len(zm) == (int64_t)sz && intact(wyvern_msg_data(zm), sz, 300 + k),
              "zero-copy sent message %u: %lld bytes", k, (long long)wyvern_msg_len(zm));
        OK(wyvern_msg_release(zm));
    }
    /* A buffer kept across failures that leave it unsent, then freed. */
    wyvern_buf *kb = NULL;
    OK(wyvern_alloc(a, 4096, TIMEOUT, &kb));
    FAILS(wyvern_send_buf(ea, 1, idb, kb, 7, TIMEOUT, NULL), WYVERN_EINVAL);
    FAILS(wyvern_send_buf(eb, 0, ida, kb, WYVERN_BUFFERED, TIMEOUT, NULL), WYVERN_EINVAL);
    CHECK(strstr(wyvern_last_error(), "another client") != NULL, "detail: %s",
          wyvern_last_error());
    CHECK(wyvern_buf_len(kb) == 4096, "still ours after the refusals");
    OK(wyvern_buf_free(kb));
    FAILS(wyvern_buf_free(kb), WYVERN_EBADHANDLE);
    FAILS(wyvern_alloc(a, 4096, TIMEOUT, NULL), WYVERN_EINVAL);
    FAILS(wyvern_alloc(a, (size_t)1 << 40, TIMEOUT, &kb), WYVERN_ETOOLARGE);
    FAILS(wyvern_buf_free((wyvern_buf *)ea), WYVERN_EBADHANDLE);
    FAILS(wyvern_send_buf(ea, 1, idb, (wyvern_buf *)(uintptr_t)77, WYVERN_BUFFERED, 0, NULL),
          WYVERN_EBADHANDLE);
    /* An unsent buffer is given back by detach (the agent's blocks all come back: the test
       checks its stat after). */
    wyvern_buf *left = NULL;
    OK(wyvern_alloc(b, 65536, TIMEOUT, &left));

    /* ---- bad arguments */
    wyvern_client *c = NULL;
    FAILS(wyvern_attach(NULL, "x", &c), WYVERN_EINVAL);
    FAILS(wyvern_attach(argv[1], "x", NULL), WYVERN_EINVAL);
    FAILS(wyvern_attach("/nonexistent/agent.sock", "x", &c), WYVERN_ECONNECT);
    CHECK(strstr(wyvern_last_error(), "/nonexistent/agent.sock") != NULL, "path in the detail");
    CHECK(c == NULL, "nothing written by a failed attach");
    FAILS(wyvern_send(ea, 1, idb, NULL, 5, WYVERN_BUFFERED, TIMEOUT), WYVERN_EINVAL);
    FAILS(wyvern_send(ea, 1, idb, "x", 1, 2, TIMEOUT), WYVERN_EINVAL);
    FAILS(wyvern_recv(eb, rbuf, 16, NULL, 0), WYVERN_EINVAL);
    FAILS(wyvern_recv(eb, NULL, 16, &len, 0), WYVERN_EINVAL);
    FAILS(wyvern_recv_zc(eb, NULL, 0), WYVERN_EINVAL);
    FAILS(wyvern_endpoint_open(a, WYVERN_ANY, NULL), WYVERN_EINVAL);
    FAILS(wyvern_endpoint_id(ea, NULL), WYVERN_EINVAL);
    FAILS(wyvern_node_id(a, NULL), WYVERN_EINVAL);
    FAILS(wyvern_take_error(a, NULL), WYVERN_EINVAL);
    FAILS(wyvern_poll(NULL), WYVERN_EINVAL);
    FAILS(wyvern_detach(NULL), WYVERN_EINVAL);
    CHECK(strcmp(wyvern_strerror(-12345), "unknown wyvern error code") == 0, "unknown code");
    CHECK(strcmp(wyvern_strerror(WYVERN_ENOSPC), wyvern_strerror(WYVERN_EAGAIN)) != 0,
          "codes have their own words");

    /* ---- foreign handles: made up, or of another kind */
    FAILS(wyvern_poll((wyvern_endpoint *)(uintptr_t)0x1234), WYVERN_EBADHANDLE);
    FAILS(wyvern_detach((wyvern_client *)(uintptr_t)0xdeadbeef), WYVERN_EBADHANDLE);
    FAILS(wyvern_msg_release((wyvern_msg *)(uintptr_t)8), WYVERN_EBADHANDLE);
    FAILS(wyvern_poll((wyvern_endpoint *)a), WYVERN_EBADHANDLE);
    FAILS(wyvern_node_id((wyvern_client *)ea, &n), WYVERN_EBADHANDLE);
    CHECK(wyvern_msg_data((wyvern_msg *)eb) == NULL, "an endpoint is no message");

    /* ---- a closed endpoint */
    wyvern_endpoint *ec = NULL;
    OK(wyvern_endpoint_open(a, 11, &ec));
    OK(wyvern_endpoint_close(ec));
    FAILS(wyvern_send(ec, 1, idb, "x", 1, WYVERN_BUFFERED, TIMEOUT), WYVERN_ECLOSED);
    FAILS(wyvern_recv(ec, rbuf, 16, &len, 0), WYVERN_ECLOSED);
    FAILS(wyvern_poll(ec), WYVERN_ECLOSED);
    FAILS(wyvern_endpoint_close(ec), WYVERN_ECLOSED);
    OK(wyvern_endpoint_open(a, 11, &ec)); /* the id is free again */
    FAILS(wyvern_send(eb, 0, 12, "x", 1, WYVERN_DELIVERED, TIMEOUT), WYVERN_EUNKNOWN_ENDPOINT);

    /* ---- one thread at a time: a second thread is refused while the first waits */
    struct blocked_recv br = {eb, 0, 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, recv_in_thread, &br) == 0, "pthread_create");
    /* Probe until the other thread is inside its receive (at most 5 s). */
    int probe = WYVERN_OK;
    for (int i = 0; i < 500 && probe == WYVERN_OK; i++) {
        nanosleep(&(struct timespec){0, 10000000}, NULL);
        probe = wyvern_node_id(b, &n);
    }
    FAILS(probe, WYVERN_EBUSY);
    FAILS(wyvern_node_id(b, &n), WYVERN_EBUSY);
    FAILS(wyvern_send(eb, 0, ida, "x", 1, WYVERN_BUFFERED, 0), WYVERN_EBUSY);
    OK(wyvern_node_id(a, &n)); /* another client is not affected */
    pthread_join(th, NULL);
    CHECK(br.rc == WYVERN_ETIMEDOUT && br.took >= 0.9, "the waiting thread: %d after %.3f s",
          br.rc, br.took);
    OK(wyvern_node_id(b, &n)); /* and after it, this thread may use the client again */

    /* ---- detach: every handle of the client is stale, even an unreleased message */
    OK(wyvern_send(ea, 1, idb, sbuf, 1u << 20, WYVERN_DELIVERED, TIMEOUT));
    wyvern_msg *held = NULL;
    OK(wyvern_recv_zc(eb, &held, TIMEOUT));
    CHECK(wyvern_msg_zero_copy(held) == 1, "a 1 MiB message is zero-copy");
    OK(wyvern_detach(b));
    FAILS(wyvern_detach(b), WYVERN_EBADHANDLE);
    FAILS(wyvern_node_id(b, &n), WYVERN_EBADHANDLE);
    FAILS(wyvern_send(eb, 0, ida, "x", 1, WYVERN_BUFFERED, 0), WYVERN_EBADHANDLE);
    FAILS(wyvern_recv(eb, rbuf, 16, &len, 0), WYVERN_EBADHANDLE);
    FAILS(wyvern_msg_release(held), WYVERN_EBADHANDLE);
    FAILS(wyvern_buf_len(left), WYVERN_EBADHANDLE);
    CHECK(wyvern_msg_data(held) == NULL, "data of a message of a detached client");
    /* The agent closed b's endpoint with it. */
    FAILS(wyvern_send(ea, 1, idb, "x", 1, WYVERN_DELIVERED, TIMEOUT), WYVERN_EUNKNOWN_ENDPOINT);

    OK(wyvern_detach(a));
    FAILS(wyvern_poll(ea), WYVERN_EBADHANDLE);
    free(sbuf);
    free(rbuf);
    printf("capi_test: %d checks passed\n", checks);
    return 0;
}
