/* bf16 helpers shared by herd's native kernels: conversions and an AVX512-BF16 row dot product.
   bf16 values travel as uint16_t; arithmetic is fp32. */
#pragma once
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as torch's casts do (NaN stays NaN). */
static inline uint16_t to_bf16(float v) {
    return (uint16_t)_mm_extract_epi16((__m128i)_mm_cvtneps_pbh(_mm_set_ss(v)), 0);
}

static inline float round_bf16(float v) { return from_bf16(to_bf16(v)); }

static inline __m512 dot32(__m512 acc, const uint16_t *w, const uint16_t *x, __mmask32 mask) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(mask, w), (__m512bh)_mm512_maskz_loadu_epi16(mask, x));
}

/* sum_k w[k] * x[k] in fp32. Two accumulators hide the dot product's latency; the tail is masked. */
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

/* out[b] = row_dot(w, xs[b], K) for b < N, bit for bit (the same two accumulators per row, summed in the
   same order), with each chunk of w loaded once for all N rows: several rows of x against one weight row
   are bound by the dot products, not by loads. */
#define HERD_ROW_DOTS_BF16(N)                                                                              \
    static inline void row_dots_##N(const uint16_t *w, const uint16_t *const *xs, long K, float *out) {   \
        __m512 a0[N], a1[N];                                                                               \
        for (int b = 0; b < N; b++) a0[b] = a1[b] = _mm512_setzero_ps();                                   \
        const __mmask32 all = ~(__mmask32)0;                                                               \
        long k = 0;                                                                                        \
        for (; k + 64 <= K; k += 64) {                                                                     \
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k);                                       \
            const __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + k + 32);                                  \
            for (int b = 0; b < N; b++) {                                                                  \
                a0[b] = _mm512_dpbf16_ps(a0[b], w0, (__m512bh)_mm512_loadu_si512(xs[b] + k));              \
                a1[b] = _mm512_dpbf16_ps(a1[b], w1, (__m512bh)_mm512_loadu_si512(xs[b] + k + 32));         \
            }                                                                                              \
        }                                                                                                  \
        for (; k < K; k += 32) {                                                                           \
            const long left = K - k;                                                                       \
            const __mmask32 mask = left >= 32 ? all : (__mmask32)((1u << left) - 1);                       \
            for (int b = 0; b < N; b++) a0[b] = dot32(a0[b], w + k, xs[b] + k, mask);                      \
        }                                                                                                  \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(_mm512_add_ps(a0[b], a1[b]));            \
    }
HERD_ROW_DOTS_BF16(1)
HERD_ROW_DOTS_BF16(2)
HERD_ROW_DOTS_BF16(3)
HERD_ROW_DOTS_BF16(4)
HERD_ROW_DOTS_BF16(5)
HERD_ROW_DOTS_BF16(6)
HERD_ROW_DOTS_BF16(7)
HERD_ROW_DOTS_BF16(8)

/* out[b] = row_dot(w, xs[b], K) for b < n, any n: tiles of eight rows, then the rest. */
static inline void row_dots(const uint16_t *w, const uint16_t *const *xs, long n, long K, float *out) {
    for (; n >= 8; n -= 8, xs += 8, out += 8) row_dots_8(w, xs, K, out);
    switch (n) {
    case 7: row_dots_7(w, xs, K, out); break;
    case 6: row_dots_6(w, xs, K, out); break;
    case 5: row_dots_5(w, xs, K, out); break;
    case 4: row_dots_4(w, xs, K, out); break;
    case 3: row_dots_3(w, xs, K, out); break;
    case 2: row_dots_2(w, xs, K, out); break;
    case 1: row_dots_1(w, xs, K, out); break;
    default: break;
    }
}
