/*
 * mpi_lat.c: ping-pong latency between two MPI ranks, in the manner of OSU's
 * osu_latency. The MPI peer of wyvern's latency sweep (bench/run.sh sweep).
 *
 * Rank 0 sends SIZE bytes with MPI_Send, rank 1 receives them with MPI_Recv
 * and sends SIZE bytes back; WARMUP untimed round trips, then COUNT timed
 * ones. Each round trip is timed on its own (MPI_Wtime), so the program
 * reports the p50 of the half round trips (comparable with wyvern-peer's
 * half_rtt_p50_us and ucx_perftest tag_lat's 50.0%ile column) and also the
 * mean half round trip (osu_latency's figure: total time / 2 / COUNT).
 *
 * Bounded: WARMUP + COUNT round trips, fixed on the command line; run.sh
 * also wraps mpirun in `timeout`.
 *
 * usage: mpirun -np 2 mpi_lat SIZE COUNT [WARMUP=COUNT/10]
 * prints one JSON line from rank 0:
 *   {"size":8,"count":N,"warmup":W,"half_rtt_p50_us":P,"half_rtt_mean_us":M,
 *    "half_rtt_min_us":L,"half_rtt_p99_us":Q}
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (argc < 3 || nranks != 2) {
        if (rank == 0)
            fprintf(stderr, "usage: mpirun -np 2 mpi_lat SIZE COUNT [WARMUP]\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    long msg = atol(argv[1]);
    long count = atol(argv[2]);
    long warmup = argc > 3 ? atol(argv[3]) : count / 10;
    if (msg < 0 || msg > (1L << 30) || count <= 0 || count > 100000000L || warmup < 0)
        MPI_Abort(MPI_COMM_WORLD, 2);
    int peer = 1 - rank;

    char *buf = malloc((size_t)(msg > 0 ? msg : 1));
    double *rtt = malloc(sizeof(double) * (size_t)count);
    if (!buf || !rtt)
        MPI_Abort(MPI_COMM_WORLD, 3);
    memset(buf, 'a', (size_t)(msg > 0 ? msg : 1));

    double total = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    for (long it = 0; it < warmup + count; it++) {
        if (rank == 0) {
            double t0 = MPI_Wtime();
            MPI_Send(buf, (int)msg, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
            MPI_Recv(buf, (int)msg, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            double dt = MPI_Wtime() - t0;
            if (it >= warmup) {
                rtt[it - warmup] = dt;
                total += dt;
            }
        } else {
            MPI_Recv(buf, (int)msg, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, (int)msg, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
        }
    }

    if (rank == 0) {
        qsort(rtt, (size_t)count, sizeof(double), cmp_double);
        double p50 = count % 2 ? rtt[count / 2] : (rtt[count / 2 - 1] + rtt[count / 2]) / 2;
        double p99 = rtt[(size_t)((double)(count - 1) * 0.99)];
        printf("{\"size\":%ld,\"count\":%ld,\"warmup\":%ld,\"half_rtt_p50_us\":%.3f,"
               "\"half_rtt_mean_us\":%.3f,\"half_rtt_min_us\":%.3f,\"half_rtt_p99_us\":%.3f}\n",
               msg, count, warmup, p50 / 2 * 1e6, total / count / 2 * 1e6, rtt[0] / 2 * 1e6,
               p99 / 2 * 1e6);
        fflush(stdout);
    }
    free(rtt);
    free(buf);
    MPI_Finalize();
    return 0;
}
