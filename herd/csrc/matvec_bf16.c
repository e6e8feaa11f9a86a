/* bf16 matrix-vector products on AVX512-BF16 dot-product instructions (vdpbf16ps), fp32 accumulation.

   y[m, n] = sum_k x[m, k] * w[n, k], rounded to bf16 (nearest even); x [M, K], w [N, K] and y [M, N]
   are contiguous and row-major. Built and loaded by herd/cpu_kernels.py.

   Each thread takes a contiguous range of weight rows and reads them strictly in order, one row at a
   time, so the hardware prefetcher sees one sequential stream per core; the row then stays in L1 for
   the other rows of x. (Interleaving four rows per step halved the bandwidth on the machines
   measured.) Two accumulators hide the dot product's latency. */
#include <immintrin.h>
#include <stdint.h>

static inline __m512 dot32(__m512 acc, const uint16_t *w, const uint16_t *x, __mmask32 mask) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(mask, w), (__m512bh)_mm512_maskz_loadu_epi16(mask, x));
}

static inline float row_dot(const uint16_t *w, const uint16_t *x, long K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    const __mmask32 all = ~(__mmask32)0;
    long k = 0;
    for (; k + 64 <= K; k += 64) {
        a0 = dot32(a0, w + k, x + k, all);
        a1 = dot32(a1, w + k + 32, x + k + 32, all);
    }
    for (; k < K; k += 32) {
        const long left = K - k;
        a0 = dot32(a0, w + k, x + k, left >= 32 ? all : (__mmask32)((1u << left) - 1));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static inline uint16_t to_bf16(float v) {
    return (uint16_t)_mm_extract_epi16((__m128i)_mm_cvtneps_pbh(_mm_set_ss(v)), 0);
}

void herd_matvec_bf16(const uint16_t *x, const uint16_t *w, uint16_t *y, long M, long N, long K, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const uint16_t *row = w + n * K;
        for (long m = 0; m < M; m++) y[m * N + n] = to_bf16(row_dot(row, x + m * K, K));
    }
}
