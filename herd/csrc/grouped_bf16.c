/* The bf16 grouped products: AVX512-BF16 dot products (vdpbf16ps), 32 elements of k per instruction,
   fp32 accumulation, each output rounded to bf16 once (nearest even), as oneDNN's bf16 GEMM rounds.
   See grouped.h. */
#include "bf16.h"

#define T uint16_t
#define VEC __m512bh
#define STEP 32
#define LOAD(p) ((__m512bh)_mm512_loadu_si512(p))
#define MASK(left) ((__mmask32)((1u << (left)) - 1))
#define LOADM(mask, p) ((__m512bh)_mm512_maskz_loadu_epi16(mask, p))
#define MADD(acc, w, x) _mm512_dpbf16_ps(acc, w, x)
#define STORE4(y, v) _mm_storel_epi64((__m128i *)(y), (__m128i)_mm_cvtneps_pbh(v))
#define STORE1(y, v) (*(y) = to_bf16(v))
#define DOT(w, x, K) row_dot(w, x, K)
#define NAME herd_grouped_bf16

#include "grouped.h"

/* ---- quantized experts (herd.quant: int8 / int4 codes, fp32 scales per group) against bf16 rows ----

   The same products with each block of NB weight rows dequantized to bf16 (quant.h's dequant_row: exactly
   herd.quant's dequantized values) into a buffer of this thread's that stays in L1, then passed against the
   rows as above: bit for bit `grouped` on the dequantized weight, without writing the dequantized experts
   out to memory and reading them back (a prefill's routed experts are ~90% of its weights). */
#include <stdlib.h>

#include "quant.h"

static void qgroup(const T *x, const int8_t *codes, const float *scales, T *y, long M, long N, long K, int bits,
                   long group, T *wbuf) {
    const long row_bytes = CODE_BYTES(bits, K), row_scales = SCALE_COUNT(K, group);
    const long blocks = (N + NB - 1) / NB;
    #pragma omp for schedule(static) nowait
    for (long b = 0; b < blocks; b++) {
        const long n0 = b * NB, count = N - n0 < NB ? N - n0 : NB;
        for (long j = 0; j < count; j++) {
            const int8_t *c = codes + (n0 + j) * row_bytes;
            const float *s = scales + (n0 + j) * row_scales;
            prefetch_row(bits, c, row_bytes, s);
            dequant_row(c, s, wbuf + j * K, K, bits, group, 1);
        }
        T *yb = y + n0;
        if (M <= 2 || count < NB) {  /* as `group`: row by row for a matrix-vector product and the last rows */
            for (long j = 0; j < count; j++)
                for (long m = 0; m < M; m++) STORE1(yb + m * N + j, DOT(wbuf + j * K, x + m * K, K));
            continue;
        }
        passes(x, wbuf, yb, M, N, K, NULL);
    }
}

/* y[a] = x[a] @ dequant(w[e])ᵀ for the rows a of group e (offsets as `grouped`): codes [E, N, row bytes] and
   scales [E, N, ceil(K / group)] in herd.quant.schemes' layout. Returns -1 when a buffer cannot be allocated
   (nothing written), else 0. */
int herd_qgrouped_bf16(const T *x, const int8_t *codes, const float *scales, T *y, const long *offsets, long E,
                       long N, long K, int bits, long group, int threads) {
    const long row_bytes = CODE_BYTES(bits, K), row_scales = SCALE_COUNT(K, group);
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        T *wbuf = malloc(sizeof(T) * NB * K);
        if (!wbuf) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        if (!failed)
            for (long e = 0; e < E; e++) {
                const long start = offsets[e], rows = offsets[e + 1] - start;
                if (rows > 0)
                    qgroup(x + start * K, codes + e * N * row_bytes, scales + e * N * row_scales, y + start * N, rows,
                           N, K, bits, group, wbuf);
            }
        free(wbuf);
    }
    return failed ? -1 : 0;
}
