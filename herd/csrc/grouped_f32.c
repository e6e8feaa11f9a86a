/* The fp32 grouped products: AVX512 fused multiply-adds, 16 elements of k per instruction. See grouped.h. */
#include <immintrin.h>

#define T float
#define VEC __m512
#define STEP 16
#define LOAD(p) _mm512_loadu_ps(p)
#define MASK(left) ((__mmask16)((1u << (left)) - 1))
#define LOADM(mask, p) _mm512_maskz_loadu_ps(mask, p)
#define MADD(acc, w, x) _mm512_fmadd_ps(w, x, acc)
#define STORE4(y, v) _mm_storeu_ps(y, v)
#define STORE1(y, v) (*(y) = (v))
#define DOT(w, x, K) dot_f32(w, x, K)
#define NAME herd_grouped_f32

/* sum_k w[k] * x[k]: two accumulators, the tail masked. */
static inline float dot_f32(const float *w, const float *x, long K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    long k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    for (; k < K; k += 16) {
        const __mmask16 mask = K - k >= 16 ? (__mmask16)0xffff : MASK(K - k);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, w + k), _mm512_maskz_loadu_ps(mask, x + k), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

#include "grouped.h"
