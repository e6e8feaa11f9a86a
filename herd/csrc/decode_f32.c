/* The fp32 decode step: fp32 weights, activations and cache, AVX512 fused multiply-adds. See decode.h. */
#include "f32.h"

#define T float
#define LOAD(v) (v)
#define STORE(v) (v)
#define ROUND(v) (v)
#define DOT(w, x, K) dot_f32(w, x, K)
#define DOTS(w, xs, n, K, out) dots_f32(w, xs, n, K, out)
#define QDOTS qdots
#define NAME herd_decode_f32
#define INT4_WIDTH(K) (K)  /* int4's activation layout (quant.h's qdots): the even inputs, then the odd ones */

static void int4_rows(const float *x, long K, float *out) {
    for (long k = 0; k < K / 2; k++) out[k] = x[2 * k], out[K / 2 + k] = x[2 * k + 1];
}

static float mean_square(const float *x, long n) {
    return dot_f32(x, x, n) / (float)n;
}

#include "decode.h"
