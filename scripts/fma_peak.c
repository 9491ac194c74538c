// The machine's peak f32 multiply-add rate: independent AVX-512 FMA chains on each thread,
// so that neither latency nor memory limits them. It is the ceiling a convolution can
// approach; docs/benchmarks.md compares each framework's inference against it.
//
//   gcc -O2 -mavx512f -mfma -pthread scripts/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak 2
//
// Prints GFLOP/s (2 per multiply-add) over the given number of threads (default 1).
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

// Independent accumulators: two FMA units times a latency of about 4 cycles, with room.
#define CHAINS 12
#define ITERATIONS 133333333L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile float sink;

static void *chains(void *unused) {
    (void)unused;
    __m512 acc[CHAINS];
    const __m512 scale = _mm512_set1_ps(1.0000001f), shift = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < ITERATIONS; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], scale, shift);
    }
    float total = 0;
    for (int i = 0; i < CHAINS; i++) total += _mm512_reduce_add_ps(acc[i]);
    sink = total;  // keeps the loop from being optimised away
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s [threads, 1-256]\n", argv[0]);
        return 2;
    }
    pthread_t ids[256];
    double started = now();
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, chains, NULL);
    for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    double seconds = now() - started;
    double flops = (double)ITERATIONS * CHAINS * 16 * 2 * threads;
    printf("threads %d: %.1f GFLOP/s (%.2f s)\n", threads, flops / seconds / 1e9, seconds);
    return 0;
}
