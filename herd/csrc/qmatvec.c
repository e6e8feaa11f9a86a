/* Quantized matrix-vector products: y[m, n] = Σ_k dequant(W)[n, k] · x[m, k] in fp32, for int8 and int4
   weights in herd/quant/schemes.py's layout (see quant.h). Built and loaded by herd/cpu_kernels.py.

   fp32 activations: xa is x [M, K] for int8; for int4 the even inputs [M, K/2], xb the odd ones. bf16: xa is x
   split into phases [M, phases, ceil(K / phases)] (quant.h: int8 two, int4 four), xb NULL. Each thread takes a
   contiguous range of weight rows and streams their codes and scales in order. */
#include <stdlib.h>

#include "quant.h"

/* NAME(xa, xb, codes, scales, y, M, N, K, bits, group, threads) for activations of type XT, products by QDOTS,
   rows of xa WIDTH elements apart. */
#define HERD_QMATVEC(NAME, XT, QDOTS, WIDTH)                                                                   \
    void NAME(const XT *xa, const XT *xb, const int8_t *codes, const float *scales, float *y, long M, long N,  \
              long K, int bits, long group, int threads) {                                                     \
        const long row_bytes = CODE_BYTES(bits, K), row_scales = SCALE_COUNT(K, group);                        \
        const long width = (WIDTH);                                                                            \
        _Pragma("omp parallel num_threads(threads)")                                                           \
        {                                                                                                      \
            const XT *as[M], *bs[M];                                                                           \
            float dots[M];                                                                                     \
            for (long m = 0; m < M; m++) as[m] = xa + m * width, bs[m] = xb ? xb + m * width : as[m];         \
            _Pragma("omp for schedule(static)")                                                                \
            for (long n = 0; n < N; n++) {                                                                     \
                prefetch_row(bits, codes + n * row_bytes, row_bytes, scales + n * row_scales);                 \
                QDOTS(bits, codes + n * row_bytes, scales + n * row_scales, group, as, bs, M, K, dots);        \
                for (long m = 0; m < M; m++) y[m * N + n] = dots[m];                                           \
            }                                                                                                  \
        }                                                                                                      \
    }

/* fp32 activations: codes widened to fp32, FMAs. */
HERD_QMATVEC(herd_qmatvec, float, qdots, bits == 4 ? K / 2 : K)
/* bf16 activations: codes looked up as bf16 values, AVX512-BF16 dot products. */
HERD_QMATVEC(herd_qmatvec_bf16, uint16_t, qdots_bf16, bf16_phases(bits) * phase_len(K, bf16_phases(bits)))

/* int8 / int4 codes against int8 activations (quant.h's VNNI products): x [M, K] fp32 or bf16 (bf16 1),
   quantized here into blocks of 32 as the decode step quantizes them. */
void herd_qmatvec_a8(const void *x, int bf16, const int8_t *codes, const float *scales, float *y, long M, long N,
                     long K, int bits, long group, int threads) {
    const long row_bytes = CODE_BYTES(bits, K), row_scales = SCALE_COUNT(K, group), qbytes = a8_row_bytes(K, bits);
    int8_t *xq = aligned_alloc(64, qbytes * (M ? M : 1));
    if (!xq) return;
    const int8_t *rows[M ? M : 1];
    for (long m = 0; m < M; m++) {
        a8_quantize(bf16 ? (const void *)((const uint16_t *)x + m * K) : (const void *)((const float *)x + m * K),
                    bf16, K, bits, xq + m * qbytes);
        rows[m] = xq + m * qbytes;
    }
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        float dots[M ? M : 1];
        qdots_a8(bits, codes + n * row_bytes, scales + n * row_scales, group, rows, M, K, dots);
        for (long m = 0; m < M; m++) y[m * N + n] = dots[m];
    }
    free(xq);
}

/* out [M, K] = each row of x [M, K] (fp32, or bf16 when bf16) as the int8-activation products see it (quant.h's
   a8_dequantized), in x's type; rows in parallel. */
void herd_a8_dequantized(const void *x, void *out, long M, long K, int bf16, int threads) {
    const long width = bf16 ? 2 : 4;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long m = 0; m < M; m++)
        a8_dequantized((const char *)x + m * K * width, bf16, K, (char *)out + m * K * width);
}

/* w[n, k] = q · scale as bf16 (round to nearest even) or fp32 (out_bf16 0): the dequantized weight [N, K] for
   a prefill's matrix product, written in one vectorized parallel pass (torch's unpack-multiply-cast takes
   five). Groups are multiples of 32 (herd.quant.schemes); K need not be a multiple of the group. */
void herd_dequant(const int8_t *codes, const float *scales, void *out, long N, long K, int bits, long group,
                  int out_bf16, int threads) {
    const long row_bytes = CODE_BYTES(bits, K), row_scales = SCALE_COUNT(K, group);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        void *o = out_bf16 ? (void *)((uint16_t *)out + n * K) : (void *)((float *)out + n * K);
        dequant_row(codes + n * row_bytes, scales + n * row_scales, o, K, bits, group, out_bf16);
    }
}
