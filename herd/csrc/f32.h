/* fp32 helpers shared by herd's native kernels: an AVX512 row dot product. */
#pragma once
#include <immintrin.h>

/* sum_k w[k] * x[k]: two accumulators hide the multiply-add latency; the tail is masked. */
static inline float dot_f32(const float *w, const float *x, long K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    long k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    for (; k < K; k += 16) {
        const long left = K - k;
        const __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, w + k), _mm512_maskz_loadu_ps(mask, x + k), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* out[b] = dot_f32(w, xs[b], K) for b < N, bit for bit (the same two accumulators per row, summed in the same
   order), with each chunk of w loaded once for all N rows. */
#define HERD_ROW_DOTS_F32(N)                                                                               \
    static inline void dots_f32_##N(const float *w, const float *const *xs, long K, float *out) {         \
        __m512 a0[N], a1[N];                                                                               \
        for (int b = 0; b < N; b++) a0[b] = a1[b] = _mm512_setzero_ps();                                   \
        long k = 0;                                                                                        \
        for (; k + 32 <= K; k += 32) {                                                                     \
            const __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);                    \
            for (int b = 0; b < N; b++) {                                                                  \
                a0[b] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[b] + k), a0[b]);                            \
                a1[b] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs[b] + k + 16), a1[b]);                       \
            }                                                                                              \
        }                                                                                                  \
        for (; k < K; k += 16) {                                                                           \
            const long left = K - k;                                                                       \
            const __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);        \
            const __m512 wk = _mm512_maskz_loadu_ps(mask, w + k);                                          \
            for (int b = 0; b < N; b++)                                                                    \
                a0[b] = _mm512_fmadd_ps(wk, _mm512_maskz_loadu_ps(mask, xs[b] + k), a0[b]);                \
        }                                                                                                  \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(_mm512_add_ps(a0[b], a1[b]));            \
    }
HERD_ROW_DOTS_F32(1)
HERD_ROW_DOTS_F32(2)
HERD_ROW_DOTS_F32(3)
HERD_ROW_DOTS_F32(4)
HERD_ROW_DOTS_F32(5)
HERD_ROW_DOTS_F32(6)
HERD_ROW_DOTS_F32(7)
HERD_ROW_DOTS_F32(8)

/* out[b] = dot_f32(w, xs[b], K) for b < n, any n: tiles of eight rows, then the rest. */
static inline void dots_f32(const float *w, const float *const *xs, long n, long K, float *out) {
    for (; n >= 8; n -= 8, xs += 8, out += 8) dots_f32_8(w, xs, K, out);
    switch (n) {
    case 7: dots_f32_7(w, xs, K, out); break;
    case 6: dots_f32_6(w, xs, K, out); break;
    case 5: dots_f32_5(w, xs, K, out); break;
    case 4: dots_f32_4(w, xs, K, out); break;
    case 3: dots_f32_3(w, xs, K, out); break;
    case 2: dots_f32_2(w, xs, K, out); break;
    case 1: dots_f32_1(w, xs, K, out); break;
    default: break;
    }
}
