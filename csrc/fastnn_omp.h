/* OpenMP shim: the kernels query the runtime through these names whether or
 * not the build has OpenMP, so a serial build still compiles and links. */
#ifndef FASTNN_OMP_H
#define FASTNN_OMP_H
#ifdef _OPENMP
#include <omp.h>
#include <stdatomic.h>
#define FASTNN_HAVE_OPENMP 1
#define FASTNN_OPENMP_VERSION _OPENMP
#else
#define FASTNN_HAVE_OPENMP 0
#define FASTNN_OPENMP_VERSION 0
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
#endif

/* Mean seconds of a round trip of one cache line between the two threads of
 * a team of two: thread 0 writes a counter, thread 1 answers, `iterations`
 * times after as many untimed, or until `budget` seconds have passed.  It is
 * what every fork, barrier and shared array of a parallel region waits on,
 * and on a virtual machine it depends on where the host runs the two vCPUs
 * (measured here: 70-180 ns on some placements, 400-470 ns on others, for
 * seconds to minutes at a time).  -1 without OpenMP, without a team of two,
 * or when the budget ran out before any round trip was timed. */
static double fastnn_team_round_trip(long long iterations, double budget)
{
    double seconds = -1.0;
#ifdef _OPENMP
    if (iterations > (1LL << 40))   /* the counter holds 2 * iterations + 2 */
        iterations = 1LL << 40;
    atomic_llong turn = 0;      /* odd: thread 1 to answer; -1: stop */
    long long timed = 0;
#pragma omp parallel num_threads(2)
    {
        if (omp_get_num_threads() == 2 && omp_get_thread_num() == 0) {
            const double start = omp_get_wtime();
            double t0 = start;
            long long i = 0;
            for (; i < 2 * iterations; i++) {
                if (i == iterations)
                    t0 = omp_get_wtime();
                if ((i & 63) == 0 && omp_get_wtime() - start > budget)
                    break;
                atomic_store_explicit(&turn, 2 * i + 1, memory_order_release);
                while (atomic_load_explicit(&turn, memory_order_acquire) != 2 * i + 2)
                    ;
            }
            timed = i - iterations;
            if (timed > 0)
                seconds = (omp_get_wtime() - t0) / (double)timed;
            atomic_store_explicit(&turn, -1, memory_order_release);
        } else if (omp_get_num_threads() == 2) {
            for (long long i = 0;; i++) {
                long long seen;
                while ((seen = atomic_load_explicit(&turn, memory_order_acquire)) != 2 * i + 1
                       && seen != -1)
                    ;
                if (seen == -1)
                    break;
                atomic_store_explicit(&turn, 2 * i + 2, memory_order_release);
            }
        }
    }
#else
    (void)iterations;
    (void)budget;
#endif
    return seconds;
}
#endif
