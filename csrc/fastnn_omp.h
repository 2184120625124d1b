/* OpenMP shim: the kernels query the runtime through these names whether or
 * not the build has OpenMP, so a serial build still compiles and links. */
#ifndef FASTNN_OMP_H
#define FASTNN_OMP_H
#ifdef _OPENMP
#include <omp.h>
#define FASTNN_HAVE_OPENMP 1
#define FASTNN_OPENMP_VERSION _OPENMP
#else
#define FASTNN_HAVE_OPENMP 0
#define FASTNN_OPENMP_VERSION 0
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
#endif
#endif
