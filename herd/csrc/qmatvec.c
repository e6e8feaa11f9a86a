/* Quantized matrix-vector products: y[m, n] = Σ_k dequant(W)[n, k] · x[m, k] in fp32, for int8 and int4
   weights in herd/quant/schemes.py's layout (see quant.h). Built and loaded by herd/cpu_kernels.py.

   fp32 activations: xa is x [M, K] for int8; for int4 the even inputs [M, K/2], xb the odd ones. bf16: xa is x
   split into phases [M, phases, ceil(K / phases)] (quant.h: int8 two, int4 four), xb NULL. Each thread takes a
   contiguous range of weight rows and streams their codes and scales in order. */
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
                prefetch_row(codes + n * row_bytes, row_bytes, scales + n * row_scales);                       \
                QDOTS(bits, codes + n * row_bytes, scales + n * row_scales, group, as, bs, M, K, dots);        \
                for (long m = 0; m < M; m++) y[m * N + n] = dots[m];                                           \
            }                                                                                                  \
        }                                                                                                      \
    }

/* fp32 activations: codes widened to fp32, FMAs. */
HERD_QMATVEC(herd_qmatvec, float, qdots, bits == 4 ? K / 2 : K)
/* bf16 activations: codes looked up as bf16 values, AVX512-BF16 dot products. */
HERD_QMATVEC(herd_qmatvec_bf16, uint16_t, qdots_bf16, bf16_phases(bits) * phase_len(K, bf16_phases(bits)))

/* Store 16 fp32 values at out + k as bf16 (round to nearest even) or fp32. */
static inline void put16(void *out, long k, __m512 v, int out_bf16) {
    if (out_bf16) _mm256_storeu_si256((__m256i *)((uint16_t *)out + k), (__m256i)_mm512_cvtneps_pbh(v));
    else _mm512_storeu_ps((float *)out + k, v);
}

/* w[n, k] = q · scale as bf16 (round to nearest even) or fp32 (out_bf16 0): the dequantized weight [N, K] for
   a prefill's matrix product, written in one vectorized parallel pass (torch's unpack-multiply-cast takes
   five). Groups are multiples of 32 (herd.quant.schemes); K need not be a multiple of the group. */
void herd_dequant(const int8_t *codes, const float *scales, void *out, long N, long K, int bits, long group,
                  int out_bf16, int threads) {
    const long row_bytes = CODE_BYTES(bits, K), row_scales = SCALE_COUNT(K, group);
    const __m512i evens = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i odds = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const int8_t *c = codes + n * row_bytes;
        const float *s = scales + n * row_scales;
        void *o = out_bf16 ? (void *)((uint16_t *)out + n * K) : (void *)((float *)out + n * K);
        for (long g0 = 0, si = 0; g0 < K; g0 += group, si++) {  /* by groups: no division per element */
            const long end = g0 + group < K ? g0 + group : K;
            const __m512 scale = _mm512_set1_ps(s[si]);
            long k = g0;
            if (bits == 4) {
                for (; k + 32 <= end; k += 32) {  /* 16 bytes: inputs k, k+1 in byte k/2 (low, high nibble) */
                    const __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(c + k / 2)));
                    const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28)), scale);
                    const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(v, 4)), scale);
                    put16(o, k, _mm512_permutex2var_ps(lo, evens, hi), out_bf16);
                    put16(o, k + 16, _mm512_permutex2var_ps(lo, odds, hi), out_bf16);
                }
                for (; k < end; k += 2) {
                    const int8_t byte = c[k / 2];
                    const float a = (float)((int8_t)(byte << 4) >> 4) * s[si], b = (float)(byte >> 4) * s[si];
                    if (out_bf16) ((uint16_t *)o)[k] = to_bf16(a), ((uint16_t *)o)[k + 1] = to_bf16(b);
                    else ((float *)o)[k] = a, ((float *)o)[k + 1] = b;
                }
            } else {
                for (; k + 16 <= end; k += 16)
                    put16(o, k, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                        _mm_loadu_si128((const __m128i *)(c + k)))), scale), out_bf16);
                for (; k < end; k++) {
                    const float a = (float)c[k] * s[si];
                    if (out_bf16) ((uint16_t *)o)[k] = to_bf16(a);
                    else ((float *)o)[k] = a;
                }
            }
        }
    }
}
