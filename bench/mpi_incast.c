/*
 * mpi_incast.c: the incast pattern of bench/incast.sh over MPI, as its peer.
 *
 * Ranks 1..N-1 MPI_Send SIZE-byte messages (SIZE >= 32: sender rank,
 * sequence, CLOCK_MONOTONIC stamp, flags; the rest a pattern of rank and
 * sequence) to rank 0 as fast as MPI takes them. Rank 0 receives with
 * MPI_ANY_SOURCE at most RATE messages/s and checks every sender's sequence
 * (complete, in order, intact). Over a window of WINDOW_MS that opens
 * WARMUP_MS after its first message it counts, per sender, the messages
 * delivered in it and the messages sent in it (by their stamps: all of them
 * delivered by the end), and the latency of those delivered in it (receive
 * time minus stamp). At the window's end it tells every sender to stop
 * (tag 2); each sends a last message (flag 1) and reports its peak RSS;
 * rank 0 reads the rest unpaced.
 *
 * MPI sends small messages eagerly: MPI_Send returns at once and whatever
 * rank 0 has not read waits in its unexpected-message queue, without bound
 * (tried: 4 senders, rank 0 paced at 5,000 msg/s: 9 GB in 3 s). So every
 * sender also stops after MAX_MSGS messages (default 10,000: 100 senders
 * put about 1 GB into rank 0), and then waits for rank 0's word; with
 * that cap the senders are done long before the window, whose "sent"
 * figures then say nothing.
 *
 * Bounded: senders stop at the window's end, after MAX_MSGS or after
 * MAX_SECS; rank 0 gives up MAX_SECS + 60 s after its start (incast.sh also
 * wraps mpirun in `timeout`).
 *
 * usage: mpi_incast SIZE RATE WARMUP_MS WINDOW_MS [MAX_SECS=120] [MAX_MSGS=10000]
 * prints one JSON line from rank 0 (the fields bench/incast.sh reads).
 */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void fill(unsigned char *p, size_t n, uint64_t key, uint64_t seq)
{
    uint64_t s = key * 0x9E3779B97F4A7C15ull ^ seq * 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p[i] = (unsigned char)s;
    }
}

/* Peak resident set of this process, KiB. */
static long hwm_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld", &v) == 1)
            break;
    if (f)
        fclose(f);
    return v;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double jain(const double *x, int n)
{
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) {
        s += x[i];
        q += x[i] * x[i];
    }
    return q > 0 ? s * s / (n * q) : 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 5 || size < 2 || atol(argv[1]) < 32) {
        if (rank == 0)
            fprintf(stderr, "usage: mpirun -np N+1 mpi_incast SIZE>=32 RATE WARMUP_MS WINDOW_MS [MAX_SECS]\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    size_t len = (size_t)atol(argv[1]);
    double rate = atof(argv[2]);
    uint64_t warmup = (uint64_t)atol(argv[3]) * 1000000ull;
    uint64_t window = (uint64_t)atol(argv[4]) * 1000000ull;
    uint64_t max_ns = (uint64_t)(argc > 5 ? atol(argv[5]) : 120) * 1000000000ull;
    uint64_t max_msgs = (uint64_t)(argc > 6 ? atol(argv[6]) : 10000);
    unsigned char *buf = malloc(len), *want = malloc(len);
    int n = size - 1;
    MPI_Barrier(MPI_COMM_WORLD);
    uint64_t t0 = mono_ns();

    if (rank != 0) {
        uint64_t seq = 0, key = (uint64_t)rank;
        int stop = 0;
        uint64_t next_look = 0;
        for (;;) {
            uint64_t now = mono_ns();
            int last = now - t0 > max_ns || seq + 1 >= max_msgs;
            if (now >= next_look) {
                next_look = now + 5000000ull;
                MPI_Iprobe(0, 2, MPI_COMM_WORLD, &stop, MPI_STATUS_IGNORE);
                last |= stop;
            }
            uint64_t flags = last ? 1 : 0;
            memcpy(buf, &key, 8);
            memcpy(buf + 8, &seq, 8);
            memcpy(buf + 24, &flags, 8);
            fill(buf + 32, len - 32, key, seq);
            uint64_t stamp = mono_ns();
            memcpy(buf + 16, &stamp, 8);
            MPI_Send(buf, (int)len, MPI_BYTE, 0, 1, MPI_COMM_WORLD);
            seq++;
            if (last)
                break;
        }
        /* Rank 0's stop (seen by the probe, or still to come) is taken. */
        MPI_Recv(NULL, 0, MPI_BYTE, 0, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        long hwm = hwm_kib();
        MPI_Send(&hwm, 1, MPI_LONG, 0, 3, MPI_COMM_WORLD);
    } else {
        uint64_t *next = calloc(n + 1, 8), *total = calloc(n + 1, 8);
        double *in_win = calloc(n, sizeof(double)), *sent_win = calloc(n, sizeof(double));
        size_t lat_cap = 1 << 20, lat_n = 0;
        uint64_t *lat = malloc(lat_cap * 8);
        uint64_t got = 0, bad = 0, disorder = 0, paced = 0;
        int lasts = 0, stopped = 0;
        uint64_t open_ns = 0, close_ns = 0, stop_ns = 0, first = 0;
        while (lasts < n && mono_ns() - t0 < max_ns + 60000000000ull) {
            if (rate > 0 && !stopped) {
                uint64_t due = first + (uint64_t)(paced / rate * 1e9);
                uint64_t now = mono_ns();
                if (first && due > now + 1000000ull) {
                    struct timespec d = {(time_t)((due - now) / 1000000000ull), (long)((due - now) % 1000000000ull)};
                    nanosleep(&d, NULL);
                }
            }
            MPI_Status st;
            MPI_Recv(buf, (int)len, MPI_BYTE, MPI_ANY_SOURCE, 1, MPI_COMM_WORLD, &st);
            uint64_t now = mono_ns(), key, seq, stamp, flags;
            memcpy(&key, buf, 8);
            memcpy(&seq, buf + 8, 8);
            memcpy(&stamp, buf + 16, 8);
            memcpy(&flags, buf + 24, 8);
            if (!first) {
                first = now;
                open_ns = now + warmup;
                close_ns = open_ns + window;
            }
            got++;
            paced++;
            if (key != (uint64_t)st.MPI_SOURCE || key == 0 || key > (uint64_t)n) {
                bad++;
                continue;
            }
            if (seq != next[key])
                disorder++;
            next[key] = seq + 1;
            fill(want, len - 32, key, seq);
            if (memcmp(want, buf + 32, len - 32) != 0)
                bad++;
            if (flags & 1) {
                total[key] = seq + 1;
                lasts++;
            }
            if (stamp >= open_ns && stamp < close_ns)
                sent_win[key - 1] += 1;
            if (now >= open_ns && now < close_ns) {
                in_win[key - 1] += 1;
                if (lat_n == lat_cap) {
                    lat_cap *= 2;
                    lat = realloc(lat, lat_cap * 8);
                }
                lat[lat_n++] = now - stamp;
            }
            if (!stopped && now >= close_ns) {
                for (int r = 1; r <= n; r++)
                    MPI_Send(NULL, 0, MPI_BYTE, r, 2, MPI_COMM_WORLD);
                stopped = 1;
                stop_ns = now;
            }
        }
        uint64_t drain = mono_ns() - stop_ns;
        long hwm_max = 0, hwm;
        for (int r = 1; r <= n; r++) {
            MPI_Recv(&hwm, 1, MPI_LONG, r, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            if (hwm > hwm_max)
                hwm_max = hwm;
        }
        int incomplete = 0;
        double sum_in = 0, sum_sent = 0, lo = 1e18, hi = 0;
        for (int k = 1; k <= n; k++) {
            incomplete += total[k] == 0 || total[k] != next[k];
            sum_in += in_win[k - 1];
            sum_sent += sent_win[k - 1];
        }
        double mean = sum_sent / n;
        for (int k = 0; k < n; k++) {
            lo = sent_win[k] < lo ? sent_win[k] : lo;
            hi = sent_win[k] > hi ? sent_win[k] : hi;
        }
        qsort(lat, lat_n, 8, cmp_u64);
#define P(q) (lat_n ? lat[(size_t)((lat_n - 1) * (q) + 0.5)] / 1e3 : 0)
        double wsecs = window / 1e9;
        printf("{\"ok\":%s,\"received\":%lu,\"senders\":%d,\"incomplete\":%d,\"corrupt\":%lu,\"out_of_order\":%lu,"
               "\"window\":{\"rate\":%.1f,\"jain\":%.4f},"
               "\"sent_window\":{\"rate\":%.1f,\"jain\":%.4f,\"min_rel\":%.3f,\"max_rel\":%.3f},"
               "\"lat_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f},\"drain_secs\":%.3f,"
               "\"rank0_hwm_kib\":%ld,\"sender_hwm_kib_max\":%ld}\n",
               (incomplete == 0 && bad == 0 && disorder == 0) ? "true" : "false", (unsigned long)got, n,
               incomplete, (unsigned long)bad, (unsigned long)disorder, sum_in / wsecs, jain(in_win, n),
               sum_sent / wsecs, jain(sent_win, n), mean > 0 ? lo / mean : 0, mean > 0 ? hi / mean : 0,
               P(0.5), P(0.99), P(0.999), drain / 1e9, hwm_kib(), hwm_max);
        fflush(stdout);
    }
    free(buf);
    free(want);
    MPI_Finalize();
    return 0;
}
