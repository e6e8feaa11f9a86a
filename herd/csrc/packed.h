/* bf16 matrix products on a weight packed for AVX512-BF16: 16 outputs per block, inputs in pairs.

   packed[n / 16][k / 2][n % 16][k % 2] = w[n][k]: one 64-byte load holds 16 outputs × 2 inputs, and a
   vdpbf16ps of it against the row's input pair (k, k+1) broadcast to every lane adds that pair's products
   to 16 outputs at once. No horizontal sums, and one weight load serves every row of x: the products of
   many rows run near the dot-product unit's rate, where row-by-row dot products (bf16.h) spend a load of x
   and a reduction per output (the LM head at 16 rows: ~2× faster on the machine measured,
   docs/BENCHMARKS.md). Outputs past N are zero rows of the packing; K is even.

   Each output is accumulated in one fp32 lane over k in order, whatever the number of rows: a row's result
   does not depend on the other rows of the batch. */
#pragma once
#include <omp.h>

#include "bf16.h"

/* Pairs of blocks a thread takes at a time (~1 MB of an LM head of 512 inputs) when they are shared out
   dynamically, as decode.h's head_rows does and for the same reason. */
#define PACKED_CHUNK 32

/* y[r * y_stride + n0 + j] = round(Σ_k w[n0 + j][k] · x_r[k]) for R rows and the `width` (1 … 32) outputs of two
   blocks from n0 (blocks wp and wp + 16·K). */
#define HERD_PACKED_TILE(R)                                                                                   \
    static inline void packed_tile_##R(const uint16_t *wp, long K, const uint16_t *const *xs, uint16_t *const *ys, \
                                       long n0, long width) {                                                \
        __m512 a0[R], a1[R];                                                                                 \
        for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();                                     \
        const uint16_t *wp1 = wp + 16 * K;                                                                   \
        if (width > 16) {                                                                                    \
            for (long k = 0; k < K; k += 2) {                                                                \
                const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp + 16 * k);                               \
                const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wp1 + 16 * k);                              \
                for (int r = 0; r < R; r++) {                                                                \
                    int32_t pair;                                                                            \
                    memcpy(&pair, xs[r] + k, sizeof pair);                                                   \
                    const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);                                    \
                    a0[r] = _mm512_dpbf16_ps(a0[r], w0, x);                                                  \
                    a1[r] = _mm512_dpbf16_ps(a1[r], w1, x);                                                  \
                }                                                                                            \
            }                                                                                                \
        } else { /* one block: the last of an odd count */                                                   \
            for (long k = 0; k < K; k += 2) {                                                                \
                const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp + 16 * k);                               \
                for (int r = 0; r < R; r++) {                                                                \
                    int32_t pair;                                                                            \
                    memcpy(&pair, xs[r] + k, sizeof pair);                                                   \
                    a0[r] = _mm512_dpbf16_ps(a0[r], w0, (__m512bh)_mm512_set1_epi32(pair));                  \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        const __mmask16 m0 = width >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << width) - 1);              \
        const __mmask16 m1 = width >= 32 ? (__mmask16)0xffff : width > 16 ? (__mmask16)((1u << (width - 16)) - 1) : 0; \
        for (int r = 0; r < R; r++) {                                                                        \
            _mm256_mask_storeu_epi16(ys[r] + n0, m0, (__m256i)_mm512_cvtneps_pbh(a0[r]));                    \
            if (m1) _mm256_mask_storeu_epi16(ys[r] + n0 + 16, m1, (__m256i)_mm512_cvtneps_pbh(a1[r]));       \
        }                                                                                                    \
    }
HERD_PACKED_TILE(1)
HERD_PACKED_TILE(2)
HERD_PACKED_TILE(3)
HERD_PACKED_TILE(4)
HERD_PACKED_TILE(5)
HERD_PACKED_TILE(6)
HERD_PACKED_TILE(7)
HERD_PACKED_TILE(8)

/* ys[b][n] = round(w[n] · xs[b]) for n < N, b < B (any B), rows in tiles of eight. An orphaned `omp for` over
   pairs of blocks without a barrier: a contiguous range per thread, or with `dynamic` shared out as threads come
   for them (decode.h's head_rows). */
static void packed_matvec(const uint16_t *wp, const uint16_t *const *xs, uint16_t *const *ys, long B, long N,
                          long K, int dynamic) {
    typedef void (*tile_fn)(const uint16_t *, long, const uint16_t *const *, uint16_t *const *, long, long);
    static const tile_fn tiles[9] = {0, packed_tile_1, packed_tile_2, packed_tile_3, packed_tile_4,
                                     packed_tile_5, packed_tile_6, packed_tile_7, packed_tile_8};
    const long pairs = (N + 31) / 32, threads = omp_get_num_threads();
    const long chunk = dynamic ? PACKED_CHUNK : (pairs + threads - 1) / threads;  /* one range a thread, else */
    #pragma omp for schedule(dynamic, chunk) nowait
    for (long p = 0; p < pairs; p++) {
        const long n0 = 32 * p, width = N - n0 < 32 ? N - n0 : 32;
        for (long b = 0; b < B; b += 8) tiles[B - b < 8 ? B - b : 8](wp + n0 * K, K, xs + b, ys + b, n0, width);
    }
}
