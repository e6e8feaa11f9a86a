/* Dot products of quantized weight rows with fp32 activation rows (herd/quant/schemes.py's layout).

   A weight row of K inputs is codes (int8: K bytes; int4: K/2 bytes, the even input in the low nibble, the
   odd one in the high nibble, two's complement) and ceil(K/group) fp32 scales. Each chunk of codes is widened
   to fp32 and multiplied by its group's scale, which is q · scale exactly as the dequantized weight holds it,
   then multiply-added into one fp32 accumulator per activation row: the result is the fp32 dot product with
   the dequantized row, up to summation order.

   int8 reads chunks of 16 codes (group a multiple of 16). int4 reads chunks of 16 bytes, 32 inputs (group a
   multiple of 32), against the activation split into its even and odd inputs (xe, xo: K/2 each), so that
   the low nibbles meet xe and the high ones xo without shuffles. The last chunk of a row is masked. */
#pragma once
#include <immintrin.h>
#include <stdint.h>

static inline __mmask16 tail16(long left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* out[b] = Σ_k dequant(w)[k] · x_b[k] for b < N rows: int8 codes, x_b = xs[b] (K floats). */
#define HERD_QDOTS_INT8(N)                                                                                    \
    static inline void qdots_int8_##N(const int8_t *codes, const float *scales, long group,                  \
                                      const float *const *xs, const float *const *unused, long K, float *out) { \
        (void)unused;                                                                                         \
        __m512 acc[N];                                                                                        \
        for (int b = 0; b < N; b++) acc[b] = _mm512_setzero_ps();                                             \
        for (long k = 0; k < K; k += 16) {                                                                    \
            const __mmask16 m = tail16(K - k);                                                                \
            const __m512i q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, codes + k));                       \
            const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(scales[k / group]));         \
            for (int b = 0; b < N; b++) acc[b] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, xs[b] + k), acc[b]); \
        }                                                                                                     \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(acc[b]);                                    \
    }

/* The same for int4 codes: xe[b], xo[b] are row b's even and odd inputs (K/2 each). */
#define HERD_QDOTS_INT4(N)                                                                                    \
    static inline void qdots_int4_##N(const int8_t *codes, const float *scales, long group,                  \
                                      const float *const *xe, const float *const *xo, long K, float *out) {   \
        __m512 acc[N];                                                                                        \
        for (int b = 0; b < N; b++) acc[b] = _mm512_setzero_ps();                                             \
        const long half = K / 2;                                                                              \
        for (long j = 0; j < half; j += 16) {                                                                 \
            const __mmask16 m = tail16(half - j);                                                             \
            const __m512i v = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, codes + j));                       \
            const __m512 s = _mm512_set1_ps(scales[2 * j / group]);                                           \
            const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28)), s); \
            const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(v, 4)), s);                  \
            for (int b = 0; b < N; b++) {                                                                     \
                acc[b] = _mm512_fmadd_ps(lo, _mm512_maskz_loadu_ps(m, xe[b] + j), acc[b]);                    \
                acc[b] = _mm512_fmadd_ps(hi, _mm512_maskz_loadu_ps(m, xo[b] + j), acc[b]);                    \
            }                                                                                                 \
        }                                                                                                     \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(acc[b]);                                    \
    }

HERD_QDOTS_INT8(1) HERD_QDOTS_INT8(2) HERD_QDOTS_INT8(3) HERD_QDOTS_INT8(4)
HERD_QDOTS_INT4(1) HERD_QDOTS_INT4(2) HERD_QDOTS_INT4(3) HERD_QDOTS_INT4(4)

typedef void (*qdots_fn)(const int8_t *, const float *, long, const float *const *, const float *const *, long,
                         float *);

/* out[b] for any number of rows n: tiles of four, then the rest. `bits` picks the code format. */
static inline void qdots(int bits, const int8_t *codes, const float *scales, long group, const float *const *xa,
                         const float *const *xb, long n, long K, float *out) {
    static const qdots_fn int8_fns[5] = {0, qdots_int8_1, qdots_int8_2, qdots_int8_3, qdots_int8_4};
    static const qdots_fn int4_fns[5] = {0, qdots_int4_1, qdots_int4_2, qdots_int4_3, qdots_int4_4};
    const qdots_fn *fns = bits == 4 ? int4_fns : int8_fns;
    for (; n > 0; n -= 4, xa += 4, xb += 4, out += 4) fns[n < 4 ? n : 4](codes, scales, group, xa, xb, K, out);
}
