/* The bf16 decode step: bf16 weights, activations and cache, fp32 accumulation on AVX512-BF16 dot products
   (vdpbf16ps), rounding to bf16 where the eager bf16 model rounds. See decode.h. */
#include "bf16.h"
#include "packed.h"

#define T uint16_t
#define LOAD(v) from_bf16(v)
#define STORE(v) to_bf16(v)
#define ROUND(v) round_bf16(v)
#define LOAD16(p, m) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16))
#define STORE16(p, v, m) _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v))
#define ROUND16(v) _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v))
#define DOT(w, x, K) row_dot(w, x, K)
#define DOTS(w, xs, n, K, out) row_dots(w, xs, n, K, out)
#define QDOTS qdots_bf16
#define QDOTS16 qdots16_bf16  /* one activation row against 16 quantized rows (quant.h) */
#define NAME herd_decode_bf16
#define PACKED_MATVEC packed_matvec  /* the LM head packed by herd.infer.native (packed.h) */
#define PHASES(bits) bf16_phases(bits)  /* the activation layout of quant.h's bf16 products */

static float mean_square(const uint16_t *x, long n) {
    __m512 acc = _mm512_setzero_ps();
    long k = 0;
    for (; k + 16 <= n; k += 16) {
        const __m512 v = _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256((const __m256i *)(x + k)));
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (; k < n; k++) sum += from_bf16(x[k]) * from_bf16(x[k]);
    return sum / (float)n;
}

#include "decode.h"
