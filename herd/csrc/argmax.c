/* The first largest element of a vector of fp32 or bf16 values, a NaN counting as larger than any number (the
   first NaN wins), as torch.argmax returns it: greedy decoding's choice from a row of logits. One thread; a
   vocabulary of 202,048 bf16 logits in ~20 µs, where torch's CPU argmax is not vectorized (~0.8 ms) and
   herd.infer.sampling's amax-based fallback takes ~60-200 µs. Built and loaded by herd/cpu_kernels.py.

   Each lane keeps the largest value it has seen and where (replaced only by a larger one, so the first of equal
   values stays); the lanes' results are then compared value first, index second. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "bf16.h"

/* 16 values from x + k (fp32 or bf16), masked to `m`; masked-off lanes read as -inf. */
static inline __m512 load16(const void *x, long k, int bf16, __mmask16 m) {
    const __m512 low = _mm512_set1_ps(-INFINITY);
    if (bf16) {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)x + k);
        return _mm512_mask_mov_ps(low, m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
    return _mm512_mask_loadu_ps(low, m, (const float *)x + k);
}

long herd_argmax(const void *x, long n, int bf16) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    __m512i where = _mm512_setzero_si512(), at = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i sixteen = _mm512_set1_epi32(16);
    for (long k = 0; k < n; k += 16, at = _mm512_add_epi32(at, sixteen)) {
        const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
        const __m512 v = load16(x, k, bf16, m);
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        if (nan) return k + __builtin_ctz(nan);
        const __mmask16 larger = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
        best = _mm512_mask_mov_ps(best, larger, v);
        where = _mm512_mask_mov_epi32(where, larger, at);
    }
    float values[16];
    int32_t index[16];
    _mm512_storeu_ps(values, best);
    _mm512_storeu_si512(index, where);
    long out = 0;  /* all -inf: the first element */
    float top = -INFINITY;
    for (int i = 0; i < 16; i++)
        if (values[i] > top || (values[i] == top && top > -INFINITY && index[i] < out)) top = values[i], out = index[i];
    return out;
}
