// The fused kernels' product loop (vendor/burn-flex/src/ops/channels_last/fused.rs,
// `micro_kernel`) alone on one core, to see how close to the FMA peak it runs and how the
// order of its loops changes that: 6 pixels x 64 output channels per tile, weights packed
// in panels of 64, the middle flow's 728 -> 728 channels in blocks of 114 pixels.
//
//   gcc -O3 -march=native -o /tmp/micro_kernel scripts/micro_kernel.c
//   /tmp/micro_kernel K C_OUT ROWS MODE [KC]
//   MODE 0: panels outer, tiles inner (the kernel's order); 1: tiles outer; 2: MODE 0 in
//   blocks of KC input channels (the sums stored and reloaded between blocks).
//   e.g. /tmp/micro_kernel 728 768 114 0; compare with scripts/fma_peak.c on one thread.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define PANEL 64
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static inline void tile(const float *a, int lda, int k, const float *panel, float *out, int ldo, int accumulate) {
    __m512 c[6][4];
    for (int p = 0; p < 6; p++)
        for (int v = 0; v < 4; v++)
            c[p][v] = accumulate ? _mm512_loadu_ps(out + p * ldo + v * 16) : _mm512_setzero_ps();
    for (int i = 0; i < k; i++) {
        __m512 w0 = _mm512_loadu_ps(panel + i * PANEL), w1 = _mm512_loadu_ps(panel + i * PANEL + 16);
        __m512 w2 = _mm512_loadu_ps(panel + i * PANEL + 32), w3 = _mm512_loadu_ps(panel + i * PANEL + 48);
        for (int p = 0; p < 6; p++) {
            __m512 x = _mm512_set1_ps(a[p * lda + i]);
            c[p][0] = _mm512_fmadd_ps(x, w0, c[p][0]);
            c[p][1] = _mm512_fmadd_ps(x, w1, c[p][1]);
            c[p][2] = _mm512_fmadd_ps(x, w2, c[p][2]);
            c[p][3] = _mm512_fmadd_ps(x, w3, c[p][3]);
        }
    }
    for (int p = 0; p < 6; p++)
        for (int v = 0; v < 4; v++) _mm512_storeu_ps(out + p * ldo + v * 16, c[p][v]);
}
int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s K C_OUT ROWS MODE [KC]\n", argv[0]);
        return 2;
    }
    int K = atoi(argv[1]), n = atoi(argv[2]), R = atoi(argv[3]), mode = atoi(argv[4]);
    int kc = argc > 5 ? atoi(argv[5]) : K;
    if (K <= 0 || n <= 0 || R <= 0 || R % 6 || kc <= 0) {
        fprintf(stderr, "K, C_OUT, KC > 0; ROWS a positive multiple of 6\n");
        return 2;
    }
    int panels = (n + 63) / 64, blocks = 40, ldo = panels * 64;
    float *a = aligned_alloc(64, (size_t)R * K * 4 * blocks);
    float *w = aligned_alloc(64, (size_t)panels * K * PANEL * 4);
    float *out = aligned_alloc(64, (size_t)R * ldo * 4 * blocks);
    for (size_t i = 0; i < (size_t)R * K * blocks; i++) a[i] = (i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)panels * K * PANEL; i++) w[i] = (i % 5) * 0.01f;
    memset(out, 0, (size_t)R * ldo * 4 * blocks);
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t = now();
        for (int b = 0; b < blocks; b++) {
            float *A = a + (size_t)b * R * K, *O = out + (size_t)b * R * ldo;
            if (mode == 1) {
                for (int r = 0; r < R; r += 6)
                    for (int j = 0; j < panels; j++)
                        tile(A + r * K, K, K, w + (size_t)j * K * PANEL, O + r * ldo + j * 64, ldo, 0);
            } else {
                int step = mode == 2 ? kc : K;
                for (int k0 = 0; k0 < K; k0 += step) {
                    int kk = K - k0 < step ? K - k0 : step;
                    for (int j = 0; j < panels; j++)
                        for (int r = 0; r < R; r += 6)
                            tile(A + r * K + k0, K, kk, w + (size_t)j * K * PANEL + (size_t)k0 * PANEL,
                                 O + r * ldo + j * 64, ldo, k0 > 0);
                }
            }
        }
        t = now() - t;
        if (t < best) best = t;
    }
    double flops = 2.0 * R * K * panels * 64 * blocks;
    printf("K=%d C_OUT=%d ROWS=%d MODE=%d KC=%d: %.1f GFLOP/s\n", K, n, R, mode, kc, flops / best * 1e-9);
    return 0;
}
