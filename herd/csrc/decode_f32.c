/* The fp32 decode step: fp32 weights, activations and cache, AVX512 fused multiply-adds. See decode.h. */
#include "f32.h"

#define T float
#define LOAD(v) (v)
#define STORE(v) (v)
#define ROUND(v) (v)
#define LOAD16(p, m) _mm512_maskz_loadu_ps(m, p)
#define STORE16(p, v, m) _mm512_mask_storeu_ps(p, m, v)
#define ROUND16(v) (v)
#define DOT(w, x, K) dot_f32(w, x, K)
#define DOTS(w, xs, n, K, out) dots_f32(w, xs, n, K, out)
#define QDOTS qdots
#define NAME herd_decode_f32
#define PHASES(bits) ((bits) == 4 ? 2 : 1)  /* quant.h's qdots: int4 the even inputs, then the odd ones */

static float mean_square(const float *x, long n) {
    return dot_f32(x, x, n) / (float)n;
}

#include "decode.h"
