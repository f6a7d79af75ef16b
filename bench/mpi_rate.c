/*
 * mpi_rate.c: windowed small-message rate between MPI rank pairs, in the
 * manner of OSU's osu_mbw_mr. The peer of wyvern's small-message rate bench.
 *
 * Ranks 0..P-1 send, ranks P..2P-1 receive (rank i pairs with i+P). Each
 * iteration a sender posts WINDOW MPI_Isend of SIZE bytes and waits for them,
 * the receiver posts WINDOW MPI_Irecv and waits, then returns a 4-byte ack
 * (as osu_mbw_mr does) so no sender runs more than one window ahead.
 *
 * Bounded: WARMUP + ITERS iterations, fixed on the command line; run.sh also
 * wraps mpirun in `timeout`.
 *
 * usage: mpi_rate SIZE ITERS [WINDOW=64] [WARMUP=ITERS/10]
 * prints one JSON line from rank 0:
 *   {"size":8,"pairs":4,"window":64,"iters":N,"msgs_per_pair":M,
 *    "rate_sum":R,"rate_wall":W,"secs_max":S}
 * rate_sum = sum over pairs of (messages of the pair / that sender's time);
 * rate_wall = all messages / the slowest sender's time.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 3 || size < 2 || size % 2 != 0) {
        if (rank == 0)
            fprintf(stderr, "usage: mpirun -np 2P mpi_rate SIZE ITERS [WINDOW] [WARMUP]\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    long msg = atol(argv[1]);
    long iters = atol(argv[2]);
    int window = argc > 3 ? atoi(argv[3]) : 64;
    long warmup = argc > 4 ? atol(argv[4]) : iters / 10;
    if (msg < 0 || iters <= 0 || window <= 0 || window > 4096 || warmup < 0)
        MPI_Abort(MPI_COMM_WORLD, 2);
    int pairs = size / 2;
    int sender = rank < pairs;
    int peer = sender ? rank + pairs : rank - pairs;

    char *buf = malloc((size_t)(msg > 0 ? msg : 1) * window);
    MPI_Request *req = malloc(sizeof(MPI_Request) * window);
    memset(buf, 'a', (size_t)(msg > 0 ? msg : 1) * window);
    int ack = 0;
    double t0 = 0, secs = 0;

    MPI_Barrier(MPI_COMM_WORLD);
    for (long it = 0; it < warmup + iters; it++) {
        if (it == warmup) {
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
        }
        if (sender) {
            for (int w = 0; w < window; w++)
                MPI_Isend(buf + (size_t)w * msg, (int)msg, MPI_CHAR, peer, 100, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(window, req, MPI_STATUSES_IGNORE);
            MPI_Recv(&ack, 1, MPI_INT, peer, 101, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            for (int w = 0; w < window; w++)
                MPI_Irecv(buf + (size_t)w * msg, (int)msg, MPI_CHAR, peer, 100, MPI_COMM_WORLD, &req[w]);
            MPI_Waitall(window, req, MPI_STATUSES_IGNORE);
            MPI_Send(&ack, 1, MPI_INT, peer, 101, MPI_COMM_WORLD);
        }
    }
    secs = MPI_Wtime() - t0;

    double msgs = (double)iters * window;
    double rate = sender ? msgs / secs : 0.0;
    double s = sender ? secs : 0.0;
    double rate_sum = 0, secs_max = 0;
    MPI_Reduce(&rate, &rate_sum, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(&s, &secs_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("{\"size\":%ld,\"pairs\":%d,\"window\":%d,\"iters\":%ld,\"msgs_per_pair\":%.0f,"
               "\"rate_sum\":%.1f,\"rate_wall\":%.1f,\"secs_max\":%.4f}\n",
               msg, pairs, window, iters, msgs, rate_sum, msgs * pairs / secs_max, secs_max);
        fflush(stdout);
    }
    free(req);
    free(buf);
    MPI_Finalize();
    return 0;
}
