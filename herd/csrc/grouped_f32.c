/* fp32 grouped products for the routed experts of a prefill: a few rows per expert against that
   expert's weight, which is read from memory once, in order, at AVX512 FMA speed.

   y[a, n] = sum_k x[a, k] * w[e, n, k] for the rows a of group e, offsets[e] <= a < offsets[e + 1].
   x [A, K], w [E, N, K] (each expert's weight row-major, output-major: its rows are contiguous along k)
   and y [A, N] are contiguous. Built and loaded by herd/cpu_kernels.py.

   In a 512-token prefill each of 16 experts gets ~32 rows. MKL's GEMM packs the weight and reaches
   about half its peak at that size on the machines measured (docs/BENCHMARKS.md). This kernel needs no
   packing: a block of 4 weight rows stays in L1 while blocks of 6 rows of x (from L2) pass against it,
   24 accumulators, 24 FMAs per 10 loads. Each thread takes a contiguous range of every expert's weight
   rows, so it streams them in order, and no thread waits on another between experts. */
#include <immintrin.h>

#define NB 4 /* weight rows per block */
#define MB 6 /* x rows per block */

/* [sum(a), sum(b), sum(c), sum(d)] */
static inline __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
#define HALF(v) _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    const __m256 ab = _mm256_hadd_ps(HALF(a), HALF(b)), cd = _mm256_hadd_ps(HALF(c), HALF(d));
#undef HALF
    const __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* rows (< MB) rows of x against NB rows of w, to y[m * ldy + 0 … NB - 1]. `rows` is a constant where
   this is inlined, so the accumulators live in registers. */
static inline __attribute__((always_inline)) void block(const float *x, const float *w, float *y, const int rows,
                                                         long K, long ldy, const float *next) {
    __m512 acc[MB][NB];
    for (int m = 0; m < rows; m++)
        for (int j = 0; j < NB; j++) acc[m][j] = _mm512_setzero_ps();
    long k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[NB];
        for (int j = 0; j < NB; j++) wv[j] = _mm512_loadu_ps(w + j * K + k);
        if (next)
            for (int j = 0; j < NB; j++) _mm_prefetch((const char *)(next + j * K + k), _MM_HINT_T0);
        for (int m = 0; m < rows; m++) {
            const __m512 xv = _mm512_loadu_ps(x + m * K + k);
            for (int j = 0; j < NB; j++) acc[m][j] = _mm512_fmadd_ps(wv[j], xv, acc[m][j]);
        }
    }
    if (k < K) {  /* the masked tail */
        const __mmask16 mask = (__mmask16)((1u << (K - k)) - 1);
        __m512 wv[NB];
        for (int j = 0; j < NB; j++) wv[j] = _mm512_maskz_loadu_ps(mask, w + j * K + k);
        for (int m = 0; m < rows; m++) {
            const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
            for (int j = 0; j < NB; j++) acc[m][j] = _mm512_fmadd_ps(wv[j], xv, acc[m][j]);
        }
    }
    for (int m = 0; m < rows; m++) _mm_storeu_ps(y + m * ldy, sum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
}

/* sum_k a[k] * b[k]: two accumulators, the tail masked. */
static float dot(const float *a, const float *b, long K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    long k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), a1);
    }
    for (; k < K; k += 16) {
        const __mmask16 mask = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + k), _mm512_maskz_loadu_ps(mask, b + k), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* One group: x [M, K] against w [N, K]; this thread's share of the NB-row blocks (static, no barrier). */
static void group(const float *x, const float *w, float *y, long M, long N, long K) {
    if (M <= 2) {  /* a matrix-vector product: one weight row at a time, read in order, is bandwidth-bound */
        #pragma omp for schedule(static) nowait
        for (long n = 0; n < N; n++)
            for (long m = 0; m < M; m++) y[m * N + n] = dot(x + m * K, w + n * K, K);
        return;
    }
    const long blocks = N / NB;
    #pragma omp for schedule(static) nowait
    for (long b = 0; b < blocks; b++) {
        const float *wb = w + b * NB * K;
        float *yb = y + b * NB;
        const float *next = b + 1 < blocks ? wb + NB * K : NULL;  /* fetched during the first pass */
        /* ceil(M / MB) passes of near-equal height: 32 rows go as 6+6+5+5+5+5, not 6·5+2 */
        const long passes = (M + MB - 1) / MB;
        for (long p = 0, m = 0; p < passes; p++, next = NULL) {
            const long rows = (M - m) / (passes - p);
            switch (rows) {
                case 6: block(x + m * K, wb, yb + m * N, 6, K, N, next); break;
                case 5: block(x + m * K, wb, yb + m * N, 5, K, N, next); break;
                case 4: block(x + m * K, wb, yb + m * N, 4, K, N, next); break;
                case 3: block(x + m * K, wb, yb + m * N, 3, K, N, next); break;
                case 2: block(x + m * K, wb, yb + m * N, 2, K, N, next); break;
                default: block(x + m * K, wb, yb + m * N, 1, K, N, next); break;
            }
            m += rows;
        }
    }
    #pragma omp for schedule(static) nowait
    for (long n = blocks * NB; n < N; n++)  /* the last N % NB rows */
        for (long m = 0; m < M; m++) y[m * N + n] = dot(x + m * K, w + n * K, K);
}

void herd_grouped_f32(const float *x, const float *w, float *y, const long *offsets, long E, long N, long K,
                      int threads) {
    #pragma omp parallel num_threads(threads)
    for (long e = 0; e < E; e++) {
        const long start = offsets[e], rows = offsets[e + 1] - start;
        if (rows > 0) group(x + start * K, w + e * N * K, y + start * N, rows, N, K);
    }
}
