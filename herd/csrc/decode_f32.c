/* The fp32 decode step: fp32 weights, activations and cache, AVX512 fused multiply-adds. See decode.h. */
#include <immintrin.h>

#define T float
#define LOAD(v) (v)
#define STORE(v) (v)
#define ROUND(v) (v)
#define DOT(w, x, K) dot_f32(w, x, K)
#define NAME herd_decode_f32

/* sum_k w[k] * x[k]: two accumulators, the tail masked. */
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

static float mean_square(const float *x, long n) {
    return dot_f32(x, x, n) / (float)n;
}

#include "decode.h"
