/* The all-to-all of tests/scale.rs over MPI, for bench/scale.sh: every rank
 * sends COUNT messages cycling through SIZES to every other rank (nonblocking,
 * all posted at once) and receives as many; rank 0 prints the time from
 * before MPI_Init to the end of the exchange, the exchange alone, and the
 * largest VmRSS of any rank.
 *   mpicc -O2 -o mpi_alltoall bench/mpi_alltoall.c
 *   mpirun --oversubscribe --allow-run-as-root -np N ./mpi_alltoall COUNT */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static long vm_rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kib = atol(line + 6);
    if (f) fclose(f);
    return kib;
}

int main(int argc, char **argv) {
    static const int sizes[] = {8, 700, 5000, 300000};
    double t0 = now();
    MPI_Init(&argc, &argv);
    int me, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    int count = argc > 1 ? atoi(argv[1]) : 20;
    int total = 2 * count * (n - 1);
    MPI_Request *req = calloc(total, sizeof *req);
    char **bufs = calloc(total, sizeof *bufs);
    MPI_Barrier(MPI_COMM_WORLD);
    double t1 = now();
    int k = 0;
    for (int p = 0; p < n; p++) {
        if (p == me) continue;
        for (int m = 0; m < count; m++) {
            int len = sizes[m % 4];
            bufs[k] = malloc(len);
            MPI_Irecv(bufs[k], len, MPI_BYTE, p, m, MPI_COMM_WORLD, &req[k]);
            k++;
            bufs[k] = malloc(len);
            memset(bufs[k], (me + m) & 0xff, len);
            MPI_Isend(bufs[k], len, MPI_BYTE, p, m, MPI_COMM_WORLD, &req[k]);
            k++;
        }
    }
    MPI_Waitall(k, req, MPI_STATUSES_IGNORE);
    MPI_Barrier(MPI_COMM_WORLD);
    double t2 = now();
    long rss = vm_rss_kib(), max_rss = 0;
    MPI_Reduce(&rss, &max_rss, 1, MPI_LONG, MPI_MAX, 0, MPI_COMM_WORLD);
    if (me == 0)
        printf("mpi ranks %d: start to exchanged %.2f s, exchange %.2f s, largest VmRSS %ld KiB\n",
               n, t2 - t0, t2 - t1, max_rss);
    for (int i = 0; i < k; i++) free(bufs[i]);
    MPI_Finalize();
    return 0;
}
