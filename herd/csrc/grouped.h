/* Grouped products for the routed experts of a prefill: a few rows per expert against that expert's
   weight, which is read from memory once, in order, at the machine's multiply-add speed. A template:
   grouped_f32.c (AVX512 FMAs) and grouped_bf16.c (AVX512-BF16 dot products, fp32 accumulation, one
   rounding to bf16 at the end) define T and the vector operations, then include this file.

   y[a, n] = sum_k x[a, k] * w[e, n, k] for the rows a of group e, offsets[e] <= a < offsets[e + 1].
   x [A, K], w [E, N, K] (each expert's weight row-major, output-major: its rows are contiguous along k)
   and y [A, N] are contiguous. Built and loaded by herd/cpu_kernels.py.

   In a 512-token prefill each of 16 experts gets ~32 rows. MKL's GEMM packs the weight and reaches
   about half its peak at that size on the machines measured (docs/BENCHMARKS.md). This kernel needs no
   packing: a block of 4 weight rows stays in L1 while blocks of 6 rows of x (from L2) pass against it,
   24 accumulators, 24 multiply-adds per 10 loads. Each thread takes a contiguous range of every
   expert's weight rows, so it streams them in order, and no thread waits on another between experts.

   The instantiation defines: T; STEP, the elements of k one vector instruction takes; LOAD(p) and
   LOADM(mask, p), the operand loads (full, and the masked tail of `left` elements, mask MASK(left));
   MADD(acc, w, x), acc += w·x over a STEP; STORE4(y, v), the four fp32 sums v to y[0…3]; STORE1(y, v);
   DOT(w, x, K), one row's dot product in fp32; NAME, the exported function. */
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

/* rows (<= MB) rows of x against NB rows of w, to y[m * ldy + 0 … NB - 1]. `rows` is a constant where
   this is inlined, so the accumulators live in registers. `next`, when set, is the next block of weight
   rows, fetched into cache along the way. */
static inline __attribute__((always_inline)) void block(const T *x, const T *w, T *y, const int rows, long K,
                                                         long ldy, const T *next) {
    __m512 acc[MB][NB];
    for (int m = 0; m < rows; m++)
        for (int j = 0; j < NB; j++) acc[m][j] = _mm512_setzero_ps();
    long k = 0;
    for (; k + STEP <= K; k += STEP) {
        VEC wv[NB];
        for (int j = 0; j < NB; j++) wv[j] = LOAD(w + j * K + k);
        if (next)  /* one cache line of each next row per 64 bytes of this one */
            for (int j = 0; j < NB; j++) _mm_prefetch((const char *)(next + j * K + k), _MM_HINT_T0);
        for (int m = 0; m < rows; m++) {
            const VEC xv = LOAD(x + m * K + k);
            for (int j = 0; j < NB; j++) acc[m][j] = MADD(acc[m][j], wv[j], xv);
        }
    }
    if (k < K) {  /* the masked tail */
        const long left = K - k;
        VEC wv[NB];
        for (int j = 0; j < NB; j++) wv[j] = LOADM(MASK(left), w + j * K + k);
        for (int m = 0; m < rows; m++) {
            const VEC xv = LOADM(MASK(left), x + m * K + k);
            for (int j = 0; j < NB; j++) acc[m][j] = MADD(acc[m][j], wv[j], xv);
        }
    }
    for (int m = 0; m < rows; m++) STORE4(y + m * ldy, sum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
}

/* M rows of x against the NB weight rows at wb, to yb (rows N apart), in ceil(M / MB) passes of near-equal
   height: 32 rows go as 6+6+5+5+5+5, not 6·5+2. `next` (or NULL) is fetched during the first pass. */
static inline __attribute__((always_inline)) void passes(const T *x, const T *wb, T *yb, long M, long N, long K,
                                                          const T *next) {
    const long count = (M + MB - 1) / MB;
    for (long p = 0, m = 0; p < count; p++, next = NULL) {
        const long rows = (M - m) / (count - p);
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

/* One group: x [M, K] against w [N, K]; this thread's share of the NB-row blocks (static, no barrier). */
static void group(const T *x, const T *w, T *y, long M, long N, long K) {
    if (M <= 2) {  /* a matrix-vector product: one weight row at a time, read in order, is bandwidth-bound */
        #pragma omp for schedule(static) nowait
        for (long n = 0; n < N; n++)
            for (long m = 0; m < M; m++) STORE1(y + m * N + n, DOT(w + n * K, x + m * K, K));
        return;
    }
    const long blocks = N / NB;
    #pragma omp for schedule(static) nowait
    for (long b = 0; b < blocks; b++) {
        const T *wb = w + b * NB * K;
        T *yb = y + b * NB;
        passes(x, wb, yb, M, N, K, b + 1 < blocks ? wb + NB * K : NULL);
    }
    #pragma omp for schedule(static) nowait
    for (long n = blocks * NB; n < N; n++)  /* the last N % NB rows */
        for (long m = 0; m < M; m++) STORE1(y + m * N + n, DOT(w + n * K, x + m * K, K));
}

void NAME(const T *x, const T *w, T *y, const long *offsets, long E, long N, long K, int threads) {
    #pragma omp parallel num_threads(threads)
    for (long e = 0; e < E; e++) {
        const long start = offsets[e], rows = offsets[e + 1] - start;
        if (rows > 0) group(x + start * K, w + e * N * K, y + start * N, rows, N, K);
    }
}
