/* Quantized matrix-vector products: y[m, n] = Σ_k dequant(W)[n, k] · x[m, k] in fp32, for int8 and int4
   weights in herd/quant/schemes.py's layout (see quant.h). Built and loaded by herd/cpu_kernels.py.

   xa is x [M, K] for int8, the even inputs [M, K/2] for int4 (xb the odd ones; NULL for int8). Each thread
   takes a contiguous range of weight rows and streams their codes and scales in order. */
#include "quant.h"

void herd_qmatvec(const float *xa, const float *xb, const int8_t *codes, const float *scales, float *y, long M,
                  long N, long K, int bits, long group, int threads) {
    const long row_bytes = bits == 4 ? K / 2 : K, row_scales = (K + group - 1) / group;
    const long width = bits == 4 ? K / 2 : K;
    #pragma omp parallel num_threads(threads)
    {
        const float *as[M], *bs[M];
        float dots[M];
        for (long m = 0; m < M; m++) as[m] = xa + m * width, bs[m] = xb ? xb + m * width : as[m];
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            qdots(bits, codes + n * row_bytes, scales + n * row_scales, group, as, bs, M, K, dots);
            for (long m = 0; m < M; m++) y[m * N + n] = dots[m];
        }
    }
}

/* The same with bf16 activations on AVX512-BF16 dot products (quant.h): xa is x [M, K] for int8, its even
   inputs [M, K/2] for int4 (xb the odd ones). fp32 results. */
void herd_qmatvec_bf16(const uint16_t *xa, const uint16_t *xb, const int8_t *codes, const float *scales, float *y,
                       long M, long N, long K, int bits, long group, int threads) {
    const long row_bytes = bits == 4 ? K / 2 : K, row_scales = (K + group - 1) / group;
    const long width = bits == 4 ? K / 2 : K;
    #pragma omp parallel num_threads(threads)
    {
        const uint16_t *as[M], *bs[M];
        float dots[M];
        for (long m = 0; m < M; m++) as[m] = xa + m * width, bs[m] = xb ? xb + m * width : as[m];
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            qdots_bf16(bits, codes + n * row_bytes, scales + n * row_scales, group, as, bs, M, K, dots);
            for (long m = 0; m < M; m++) y[m * N + n] = dots[m];
        }
    }
}
