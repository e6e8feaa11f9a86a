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

/* int8 products spend more instructions per byte than bf16 ones, so fewer of their loads are in flight and they
   read ~20% below the bandwidth bf16 rows reach; the hardware prefetcher is helped along by asking for the
   codes QUANT_PREFETCH bytes ahead of the row about to be read, and its scales a quarter of that. int4 rows
   (half the bytes) are left to the hardware prefetcher: asked for ahead, a 1-row int4 product of the benchmark
   model's LM head read at ~31 GB/s against ~45 without (interleaved, 2026-12-04). */
#define QUANT_PREFETCH 2048

static inline void prefetch_row(int bits, const int8_t *codes, long row_bytes, const float *scales) {
    if (bits != 8) return;
    for (long k = 0; k < row_bytes; k += 64) _mm_prefetch((const char *)(codes + QUANT_PREFETCH + k), _MM_HINT_T0);
    _mm_prefetch((const char *)scales + QUANT_PREFETCH / 4, _MM_HINT_T0);
}

/* One weight row of K inputs in herd/quant/schemes.py's layout: its bytes of codes and its number of scales.
   Macros, not functions: as inline functions in the decode step they moved GCC's inlining of the step's
   other helpers (rms_norm went out of line), where these expand to the very expressions they name. */
#define CODE_BYTES(bits, K) ((bits) == 4 ? (K) / 2 : (K))
#define SCALE_COUNT(K, group) (((K) + (group) - 1) / (group))

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
        for (long g0 = 0, si = 0; g0 < K; g0 += group, si++) { /* no division in the loop (~40 cycles) */    \
            const __m512 s = _mm512_set1_ps(scales[si]);                                                      \
            const long end = g0 + group < K ? g0 + group : K;                                                 \
            for (long k = g0; k < end; k += 16) {                                                             \
                const int full = end - k >= 16; /* masked loads only at the end: masking every one is slow */  \
                const __mmask16 m = tail16(end - k);                                                          \
                const __m512i q = _mm512_cvtepi8_epi32(full ? _mm_loadu_si128((const __m128i *)(codes + k))   \
                                                            : _mm_maskz_loadu_epi8(m, codes + k));            \
                const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(q), s);                                     \
                for (int b = 0; b < N; b++)                                                                   \
                    acc[b] = _mm512_fmadd_ps(w, full ? _mm512_loadu_ps(xs[b] + k)                             \
                                                     : _mm512_maskz_loadu_ps(m, xs[b] + k), acc[b]);          \
            }                                                                                                 \
        }                                                                                                     \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(acc[b]);                                    \
    }

/* The same for int4 codes: xe[b], xo[b] are row b's even and odd inputs (K/2 each). */
#define HERD_QDOTS_INT4(N)                                                                                    \
    static inline void qdots_int4_##N(const int8_t *codes, const float *scales, long group,                  \
                                      const float *const *xe, const float *const *xo, long K, float *out) {   \
        __m512 acc[N];                                                                                        \
        for (int b = 0; b < N; b++) acc[b] = _mm512_setzero_ps();                                             \
        const long half = K / 2; /* by groups of group/2 bytes, as int8 (a chunk of 16 bytes never straddles) */ \
        for (long g0 = 0, si = 0; g0 < half; g0 += group / 2, si++) {                                         \
            const __m512 s = _mm512_set1_ps(scales[si]);                                                      \
            const long end = g0 + group / 2 < half ? g0 + group / 2 : half;                                   \
            for (long j = g0; j < end; j += 16) {                                                             \
                const int full = end - j >= 16;                                                               \
                const __mmask16 m = tail16(end - j);                                                          \
                const __m512i v = _mm512_cvtepi8_epi32(full ? _mm_loadu_si128((const __m128i *)(codes + j))   \
                                                            : _mm_maskz_loadu_epi8(m, codes + j));            \
                const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28)), s); \
                const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(v, 4)), s);              \
                for (int b = 0; b < N; b++) {                                                                 \
                    acc[b] = _mm512_fmadd_ps(lo, full ? _mm512_loadu_ps(xe[b] + j)                            \
                                                      : _mm512_maskz_loadu_ps(m, xe[b] + j), acc[b]);         \
                    acc[b] = _mm512_fmadd_ps(hi, full ? _mm512_loadu_ps(xo[b] + j)                            \
                                                      : _mm512_maskz_loadu_ps(m, xo[b] + j), acc[b]);         \
                }                                                                                             \
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

/* ---- bf16 activations: codes looked up as bf16 values and multiplied on AVX512-BF16 dot products ----

   Every code is split into 4-bit halves, each turned into an exact bf16 value by one table lookup
   (vpermw over 32 bf16 words) and multiplied with vdpbf16ps: 32 products per instruction, against 16 for an
   fp32 FMA after a widening conversion. int8 q = 16·hi + lo (hi signed, lo unsigned): two lookups, two dot
   products on the same activations. A 16-bit word of codes is looked up straight from the word shifted by 0,
   4, 8 and 12 bits and dotted with phases of the activation: int8 two inputs a word, 64 per
   64-byte load; int4 four, 128 per load. Per group the partial sums are scaled in fp32. Needs int8 groups
   of 32 or 64·n, int4 groups of 32, 64 or 128·n (herd.cpu_kernels.reads_bf16; else the fp32 path above). */
#include "bf16.h"

/* bf16 bits of small integers, repeated for both halves of vpermw's 32-entry table: LO[i] = i, SIGNED[i] = i or
   i - 16 (a two's complement nibble), HI[i] = 16 · SIGNED[i]. */
static const uint16_t NIBBLE_TABLES[3][32] __attribute__((aligned(64))) = {
    {0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0, 0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170, 0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0, 0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170},
    {0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0, 0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80, 0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0, 0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80},
    {0x0000, 0x4180, 0x4200, 0x4240, 0x4280, 0x42A0, 0x42C0, 0x42E0, 0xC300, 0xC2E0, 0xC2C0, 0xC2A0, 0xC280, 0xC240, 0xC200, 0xC180, 0x0000, 0x4180, 0x4200, 0x4240, 0x4280, 0x42A0, 0x42C0, 0x42E0, 0xC300, 0xC2E0, 0xC2C0, 0xC2A0, 0xC280, 0xC240, 0xC200, 0xC180},
};

static inline __m512i nibble_table(int kind) { return _mm512_load_si512(NIBBLE_TABLES[kind]); }

/* The activation layout of the bf16 products: a row of K inputs as `phases` phases of phase_len(K, phases)
   each, phase p holding inputs phases·i + p (zero past K; decode.h's phase_split, herd.cpu_kernels.qmatvec).
   int8 takes two (a 16-bit word of codes holds
   inputs 2i, 2i+1), int4 four (a word holds inputs 4i … 4i+3): word i of a code row meets element i of
   each phase. */
static inline long phase_len(long K, long phases) { return (K + phases - 1) / phases; }

static inline int bf16_phases(int bits) { return bits == 4 ? 4 : 2; }


/* The head of a chunk of 64 bytes of codes from word i, `left` bytes in the row: the codes (masked past the
   row), the word mask m of its activation loads, and w0 … w3 = tables t0 … t3 looked up by the words shifted
   right by 0, 4, 8 and 12 bits (`full`, `v`, `m`, `w0` … `w3` in the enclosing block). */
#define HERD_WORD_LOOKUPS(i, left, t0, t1, t2, t3)                                                            \
    const int full = (left) >= 64;                                                                            \
    const __m512i v = full ? _mm512_loadu_si512(codes + 2 * (i))                                              \
                           : _mm512_maskz_loadu_epi8(((__mmask64)1 << (left)) - 1, codes + 2 * (i));          \
    const __mmask32 m = full ? ~(__mmask32)0 : (__mmask32)((1u << (((left) + 1) / 2)) - 1);                   \
    const __m512bh w0 = (__m512bh)_mm512_permutexvar_epi16(v, t0);                                            \
    const __m512bh w1 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), t1);                      \
    const __m512bh w2 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), t2);                      \
    const __m512bh w3 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), t3);

/* One chunk of int8 codes: 64 bytes (32 words, 64 inputs) from word i, `left` bytes in the row, against N
   rows' two phases (xp[b] + p·P holds inputs 2i + p), scaled lane by lane by s. A code is q = 16·hi + lo; the
   word shifted right by 0, 4, 8 and 12 indexes the lo / hi tables (vpermw reads an index's low five bits;
   the tables repeat in both halves), so nothing is masked or widened. Lane j sums words 2j and 2j+1: inputs
   4j … 4j+3 of the chunk. */
#define HERD_INT8_PAIR(N, i, left, s)                                                                         \
    {                                                                                                         \
        HERD_WORD_LOOKUPS(i, left, lo_t, hi_t, lo_t, hi_t) /* even input lo, hi; odd input lo, hi */          \
        for (int b = 0; b < N; b++) {                                                                         \
            const uint16_t *x = xp[b] + (i);                                                                  \
            const __m512bh e = (__m512bh)(full ? _mm512_loadu_si512(x) : _mm512_maskz_loadu_epi16(m, x));     \
            const __m512bh o = (__m512bh)(full ? _mm512_loadu_si512(x + P) : _mm512_maskz_loadu_epi16(m, x + P)); \
            const __m512 g = _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), w0, e), w1, e);            \
            const __m512 h = _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), w2, o), w3, o);            \
            acc[b] = _mm512_fmadd_ps(_mm512_add_ps(g, h), s, acc[b]);                                         \
        }                                                                                                     \
    }

/* One chunk of int4 codes: 64 bytes (32 words, 128 inputs) from word i, `left` bytes in the row, against N
   rows' four phases (xq[b] + p·P holds inputs 4i + p), scaled lane by lane by s. A word holds inputs 4i … 4i+3
   in its four nibbles; vpermw reads only an index's low five bits, so the word shifted right by 0, 4, 8 and
   12 indexes the nibble table (repeated in both halves) with no masking, and no widening of the bytes. Lane
   j of the dot products sums words 2j and 2j+1 of all four phases: inputs 8j … 8j+7 of the chunk. */
#define HERD_INT4_QUAD(N, i, left, s)                                                                         \
    {                                                                                                         \
        HERD_WORD_LOOKUPS(i, left, t, t, t, t)                                                                \
        for (int b = 0; b < N; b++) {                                                                         \
            const uint16_t *x = xq[b] + (i);                                                                  \
            __m512 g, h;                                                                                      \
            if (full) {                                                                                       \
                g = _mm512_dpbf16_ps(_mm512_setzero_ps(), w0, (__m512bh)_mm512_loadu_si512(x));               \
                h = _mm512_dpbf16_ps(_mm512_setzero_ps(), w1, (__m512bh)_mm512_loadu_si512(x + P));           \
                g = _mm512_dpbf16_ps(g, w2, (__m512bh)_mm512_loadu_si512(x + 2 * P));                         \
                h = _mm512_dpbf16_ps(h, w3, (__m512bh)_mm512_loadu_si512(x + 3 * P));                         \
            } else {                                                                                          \
                g = _mm512_dpbf16_ps(_mm512_setzero_ps(), w0, (__m512bh)_mm512_maskz_loadu_epi16(m, x));      \
                h = _mm512_dpbf16_ps(_mm512_setzero_ps(), w1, (__m512bh)_mm512_maskz_loadu_epi16(m, x + P));  \
                g = _mm512_dpbf16_ps(g, w2, (__m512bh)_mm512_maskz_loadu_epi16(m, x + 2 * P));                \
                h = _mm512_dpbf16_ps(h, w3, (__m512bh)_mm512_maskz_loadu_epi16(m, x + 3 * P));                \
            }                                                                                                 \
            acc[b] = _mm512_fmadd_ps(_mm512_add_ps(g, h), s, acc[b]);                                         \
        }                                                                                                     \
    }

/* Loops by group (no division or counters per chunk: each cost as much as a chunk's products); masked loads
   only in a row's last chunk (masking every load halved the speed). */
#define HERD_QDOTS_BF16(N)                                                                                    \
    static inline void qacc_bf16_int8_##N(const int8_t *codes, const float *scales, long group,              \
                                          const uint16_t *const *xp, long K, __m512 *acc) {                   \
        const __m512i lo_t = nibble_table(0), hi_t = nibble_table(2);                                         \
        const long P = phase_len(K, 2);                                                                       \
        for (int b = 0; b < N; b++) acc[b] = _mm512_setzero_ps();                                             \
        if (group == 32) { /* two groups per chunk: lanes 0-7 and 8-15 */                                    \
            for (long k = 0; k < K; k += 64) {                                                                \
                const float *sc = scales + k / 32;                                                            \
                const __m512 s = K - k > 32 ? _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(sc[0]),  \
                                                                   _mm512_set1_ps(sc[1]))                     \
                                            : _mm512_set1_ps(sc[0]);                                          \
                HERD_INT8_PAIR(N, k / 2, K - k, s)                                                            \
            }                                                                                                 \
        } else { /* a multiple of 64 inputs: whole chunks per group */                                        \
            for (long g0 = 0, si = 0; g0 < K; g0 += group, si++) {                                            \
                const __m512 s = _mm512_set1_ps(scales[si]);                                                  \
                const long end = g0 + group < K ? g0 + group : K;                                             \
                for (long k = g0; k < end; k += 64) HERD_INT8_PAIR(N, k / 2, K - k, s)                        \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    static inline void qacc_bf16_int4_##N(const int8_t *codes, const float *scales, long group,              \
                                          const uint16_t *const *xq, long K, __m512 *acc) {                   \
        const __m512i t = nibble_table(1);                                                                    \
        const long bytes = K / 2, P = phase_len(K, 4);                                                          \
        for (int b = 0; b < N; b++) acc[b] = _mm512_setzero_ps();                                             \
        if (group == 32) { /* four groups per chunk, four lanes each */                                       \
            const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);          \
            for (long j = 0; j < bytes; j += 64) {                                                            \
                const long left = bytes - j;                                                                  \
                const __m128 sc = left >= 64 ? _mm_loadu_ps(scales + j / 16)                                  \
                                             : _mm_maskz_loadu_ps((__mmask8)((1u << ((left + 15) / 16)) - 1), \
                                                                  scales + j / 16);                           \
                const __m512 s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));                   \
                HERD_INT4_QUAD(N, j / 2, left, s)                                                             \
            }                                                                                                 \
        } else if (group == 64) { /* two groups per chunk: lanes 0-7 and 8-15 */                             \
            for (long j = 0; j < bytes; j += 64) {                                                            \
                const float *sc = scales + j / 32;                                                            \
                const __m512 s = bytes - j > 32 ? _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(sc[0]), \
                                                                       _mm512_set1_ps(sc[1]))                 \
                                                : _mm512_set1_ps(sc[0]);                                      \
                HERD_INT4_QUAD(N, j / 2, bytes - j, s)                                                        \
            }                                                                                                 \
        } else { /* a multiple of 128 inputs: whole chunks per group */                                       \
            for (long g0 = 0, si = 0; g0 < bytes; g0 += group / 2, si++) {                                    \
                const __m512 s = _mm512_set1_ps(scales[si]);                                                  \
                const long end = g0 + group / 2 < bytes ? g0 + group / 2 : bytes;                             \
                for (long j = g0; j < end; j += 64) HERD_INT4_QUAD(N, j / 2, bytes - j, s)                    \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    static inline void qdots_bf16_int8_##N(const int8_t *codes, const float *scales, long group,             \
                                           const uint16_t *const *xp, long K, float *out) {                   \
        __m512 acc[N];                                                                                        \
        qacc_bf16_int8_##N(codes, scales, group, xp, K, acc);                                                 \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(acc[b]);                                    \
    }                                                                                                         \
    static inline void qdots_bf16_int4_##N(const int8_t *codes, const float *scales, long group,             \
                                           const uint16_t *const *xq, long K, float *out) {                   \
        __m512 acc[N];                                                                                        \
        qacc_bf16_int4_##N(codes, scales, group, xq, K, acc);                                                 \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(acc[b]);                                    \
    }

HERD_QDOTS_BF16(1) HERD_QDOTS_BF16(2) HERD_QDOTS_BF16(3) HERD_QDOTS_BF16(4)

/* out[b] for bf16 activation rows, any n: xa = their phases (int8 two, int4 four), xb unused. */
static inline void qdots_bf16(int bits, const int8_t *codes, const float *scales, long group,
                              const uint16_t *const *xa, const uint16_t *const *xb, long n, long K, float *out) {
    (void)xb;
    for (; n > 0; n -= 4, xa += 4, out += 4) {
        const int nb = n < 4 ? (int)n : 4;
        if (bits == 8) {
            switch (nb) {
            case 1: qdots_bf16_int8_1(codes, scales, group, xa, K, out); break;
            case 2: qdots_bf16_int8_2(codes, scales, group, xa, K, out); break;
            case 3: qdots_bf16_int8_3(codes, scales, group, xa, K, out); break;
            default: qdots_bf16_int8_4(codes, scales, group, xa, K, out); break;
            }
        } else {
            switch (nb) {
            case 1: qdots_bf16_int4_1(codes, scales, group, xa, K, out); break;
            case 2: qdots_bf16_int4_2(codes, scales, group, xa, K, out); break;
            case 3: qdots_bf16_int4_3(codes, scales, group, xa, K, out); break;
            default: qdots_bf16_int4_4(codes, scales, group, xa, K, out); break;
            }
        }
    }
}

/* a[0 … 15] summed across lanes, 16 at once: lane 4j + m holds the sum of a[4m + j], each added in the order
   _mm512_reduce_add_ps adds one vector's lanes (halves, quarters, then pairs), so bit for bit its result. */
static inline __m512 sums16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_unpacklo_ps(c[2 * i], c[2 * i + 1]), _mm512_unpackhi_ps(c[2 * i], c[2 * i + 1]));
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(d[0]), _mm512_castps_pd(d[1]))),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(d[0]), _mm512_castps_pd(d[1]))));
}

/* out[i] = the sum of acc[i]'s lanes for i < 16, each bit for bit _mm512_reduce_add_ps(acc[i]) (sums16). */
static inline void put_sums16(const __m512 *acc, float *out) {
    const __m512i rows = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(rows, sums16(acc)));
}

/* out[i] for i < count ≤ 16 consecutive weight rows (codes row_bytes, scales row_scales apart) against ONE bf16
   activation row (xa: its phases), bit for bit what qdots_bf16 gives each row: the 16 horizontal sums are
   done together, where one per row costs about a fifth of a short row's instructions. out holds 16. */
static inline void qdots16_bf16(int bits, const int8_t *codes, long row_bytes, const float *scales, long row_scales,
                                long group, const uint16_t *xa, long K, long count, float *out) {
    __m512 acc[16];
    for (long i = 0; i < 16; i++) {
        const int8_t *c = codes + i * row_bytes;
        const float *s = scales + i * row_scales;
        if (i >= count) {
            acc[i] = _mm512_setzero_ps();
            continue;
        }
        prefetch_row(bits, c, row_bytes, s);
        if (bits == 8) qacc_bf16_int8_1(c, s, group, &xa, K, acc + i);
        else qacc_bf16_int4_1(c, s, group, &xa, K, acc + i);
    }
    put_sums16(acc, out);
}

/* Store 16 fp32 values at out + k as bf16 (round to nearest even) or fp32. */
static inline void put16(void *out, long k, __m512 v, int out_bf16) {
    if (out_bf16) _mm256_storeu_si256((__m256i *)((uint16_t *)out + k), (__m256i)_mm512_cvtneps_pbh(v));
    else _mm512_storeu_ps((float *)out + k, v);
}

/* One weight row dequantized: o[k] = q · scale for k < K, as bf16 (round to nearest even) or fp32 (out_bf16 0).
   The exact values herd.quant.schemes.dequantize gives, in the activation dtype. */
static inline void dequant_row(const int8_t *c, const float *s, void *o, long K, int bits, long group, int out_bf16) {
    const __m512i evens = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i odds = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
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

/* ---- int8 activations: codes on AVX512-VNNI integer dot products (schemes with act_bits 8) ----

   The activation row is quantized as llama.cpp's Q8_0 does before its quantized products: blocks of 32 inputs,
   d = max|x| / 127, q = round(x · (1/d)) to nearest even (0 where d is 0), x ≈ q · d (herd.quant.schemes.
   quantize_activations computes the same values in torch). vpdpbusd multiplies unsigned bytes by signed ones,
   four products into each int32 lane, so a weight code is read unsigned: an int4 nibble as u = q_w + 8, an
   int8 code as u = q_w + 128 (its top bit flipped). Each lane starts from -8 · Σ q_x (int4) or -128 · Σ q_x
   (int8) of its inputs, which leaves Σ q_w · q_x exactly, and is then scaled by its weight group's scale times
   its activation block's d, in fp32. Per 64 bytes of int4 codes (128 inputs) that is two integer dot
   products, against four table lookups and four bf16 dot products; per 64 bytes of int8 codes one, against
   the same eight: about a half and a third of the instructions.

   The quantized row, zero past K:
   - for int4 codes, per chunk of 128 inputs, 256 bytes: [64 int8: even inputs 2i] [64 int8: odd inputs 2i+1]
     [16 int32: -8 · Σ q_x of inputs 8l … 8l+7 of the chunk, lane l] [16 fp32: lane l's d, block l / 4];
     code byte j (inputs 2j, 2j+1) meets byte j of both halves, and lane l sums inputs 8l … 8l+7;
   - for int8 codes, per chunk of 64 inputs, 192 bytes: [64 int8: the inputs] [16 int32: -128 · Σ q_x of
     inputs 4l … 4l+3, lane l] [16 fp32: lane l's d, block l / 8]. */
static inline long a8_chunk_inputs(int bits) { return bits == 4 ? 128 : 64; }
static inline long a8_row_bytes(long K, int bits) {
    const long n = a8_chunk_inputs(bits);
    return (K + n - 1) / n * (bits == 4 ? 256 : 192);
}

/* Inputs k … k+15 of x (fp32, or bf16 when bf16), zero past K. */
static inline __m512 a8_load16(const void *x, int bf16, long k, long K) {
    const __mmask16 m = tail16(K - k > 0 ? K - k : 0);
    if (bf16) {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)x + k);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)x + k);
}

/* Inputs k … k+31 of x quantized: their codes (16 a half) and the block's scale d. */
static inline __m256i a8_block(const void *x, int bf16, long k, long K, float *d) {
    const __m512 a = a8_load16(x, bf16, k, K), b = a8_load16(x, bf16, k + 16, K);
    *d = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b))) / 127.0f;
    const __m512 inv = _mm512_set1_ps(*d > 0.0f ? 1.0f / *d : 0.0f);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)))),
                                   _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv))), 1);
}

/* Inputs k … k+63 of x quantized: their codes, and the two blocks' scales in d. */
static inline __m512i a8_codes64(const void *x, int bf16, long k, long K, float *d) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(a8_block(x, bf16, k, K, d)), a8_block(x, bf16, k + 32, K, d + 1), 1);
}

/* The activation row x of K inputs quantized for `bits`-bit codes into out (a8_row_bytes, 64-byte aligned). */
static inline void a8_quantize(const void *x, int bf16, long K, int bits, int8_t *out) {
    const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    const long step = a8_chunk_inputs(bits);
    for (long k = 0; k < K; k += step) {
        float d[4];
        if (bits == 8) {
            const __m512i q = a8_codes64(x, bf16, k, K, d);
            _mm512_store_si512(out, q);
            _mm512_store_si512(out + 64, _mm512_sub_epi32(zero, _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, ones, q), 7)));
            _mm512_store_ps(out + 128, _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(d[0]), _mm512_set1_ps(d[1])));
            out += 192;
            continue;
        }
        const __m512i q0 = a8_codes64(x, bf16, k, K, d), q1 = a8_codes64(x, bf16, k + 64, K, d + 2);
        /* a word's low byte is an even input, its high byte an odd one */
        const __m512i even = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(q0)),
                                                _mm512_cvtepi16_epi8(q1), 1);
        const __m512i odd = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srai_epi16(q0, 8))),
                                               _mm512_cvtepi16_epi8(_mm512_srai_epi16(q1, 8)), 1);
        const __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, ones, even), ones, odd);
        _mm512_store_si512(out, even);
        _mm512_store_si512(out + 64, odd);
        _mm512_store_si512(out + 128, _mm512_sub_epi32(zero, _mm512_slli_epi32(sums, 3)));
        _mm512_store_ps(out + 192, _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                                                         _mm512_castps128_ps512(_mm_loadu_ps(d))));
        out += 256;
    }
}

/* The activation row x of K inputs as the products see it, q · d per block of 32, written to out in x's type
   (bf16 rounded to nearest even): what a8_quantize's codes stand for, for the products that run on a GEMM. */
static inline void a8_dequantized(const void *x, int bf16, long K, void *out) {
    for (long k = 0; k < K; k += 32) {
        float d;
        const __m256i q = a8_block(x, bf16, k, K, &d);
        for (int h = 0; h < 2; h++) {
            const long at = k + 16 * h;
            if (at >= K) break;
            const __m128i half = h ? _mm256_extracti128_si256(q, 1) : _mm256_castsi256_si128(q);
            const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(half)), _mm512_set1_ps(d));
            const __mmask16 m = tail16(K - at);
            if (bf16) _mm256_mask_storeu_epi16((uint16_t *)out + at, m, (__m256i)_mm512_cvtneps_pbh(v));
            else _mm512_mask_storeu_ps((float *)out + at, m, v);
        }
    }
}

/* 64 bytes of codes from byte j, `left` in the row: masked past the row (only in a row's last chunk). */
static inline __m512i a8_code_chunk(const int8_t *codes, long j, long left) {
    return left >= 64 ? _mm512_loadu_si512(codes + j) : _mm512_maskz_loadu_epi8(((__mmask64)1 << left) - 1, codes + j);
}

/* One chunk of int4 codes: 64 bytes from byte j, `left` bytes in the row, against N quantized activation rows
   (xq[b] + 4j is the chunk's 256 bytes), scaled lane by lane by the weight scales (a8_int4_scales). */
#define HERD_INT4_A8(N, j, left, weight_scales)                                                               \
    {                                                                                                         \
        const __m512 s = (weight_scales);                                                                     \
        const __m512i v = a8_code_chunk(codes, j, left);                                                      \
        const __m512i lo = _mm512_ternarylogic_epi32(v, flip, low, 0x28); /* (v ^ 0x88) & 0x0F: u = q + 8 */  \
        const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), flip, low, 0x28);              \
        for (int b = 0; b < N; b++) {                                                                         \
            const int8_t *a = xq[b] + 4 * (j);                                                                \
            __m512i t = _mm512_load_si512(a + 128);                                                           \
            t = _mm512_dpbusd_epi32(t, lo, _mm512_load_si512(a));                                             \
            t = _mm512_dpbusd_epi32(t, hi, _mm512_load_si512(a + 64));                                        \
            acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(s, _mm512_load_ps(a + 192)), acc[b]); \
        }                                                                                                     \
    }

/* The weight scales of the chunk of 64 code bytes from byte j (lane l: inputs 8l … 8l+7), `bytes` in the row:
   groups of 32 four lanes each, of 64 eight, of 128·n the whole chunk. */
static inline __m512 a8_int4_scales(const float *scales, long group, long j, long bytes) {
    if (group == 32) {
        const long left = bytes - j;
        const __m128 sc = left >= 64 ? _mm_loadu_ps(scales + j / 16)
                                     : _mm_maskz_loadu_ps((__mmask8)((1u << ((left + 15) / 16)) - 1), scales + j / 16);
        return _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                                     _mm512_castps128_ps512(sc));
    }
    if (group == 64) {
        const float *sc = scales + j / 32;
        return bytes - j > 32 ? _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(sc[0]), _mm512_set1_ps(sc[1]))
                              : _mm512_set1_ps(sc[0]);
    }
    return _mm512_set1_ps(scales[j / (group / 2)]);
}

/* One chunk of int8 codes: 64 bytes from input k, `left` inputs in the row, against N quantized activation rows
   (xq[b] + 3k is the chunk's 192 bytes), scaled lane by lane by the weight scales (a8_int8_scales). */
#define HERD_INT8_A8(N, k, left, weight_scales)                                                               \
    {                                                                                                         \
        const __m512i u = _mm512_xor_si512(a8_code_chunk(codes, k, left), top); /* u = q + 128 */             \
        const __m512 s = (weight_scales);                                                                     \
        for (int b = 0; b < N; b++) {                                                                         \
            const int8_t *a = xq[b] + 3 * (k);                                                                \
            const __m512i t = _mm512_dpbusd_epi32(_mm512_load_si512(a + 64), u, _mm512_load_si512(a));         \
            acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(s, _mm512_load_ps(a + 128)), acc[b]); \
        }                                                                                                     \
    }

/* The weight scales of the chunk of 64 int8 codes from input k (lane l: inputs 4l … 4l+3), K in the row: groups
   of 32 eight lanes each, of 64·n the whole chunk. */
static inline __m512 a8_int8_scales(const float *scales, long group, long k, long K) {
    if (group == 32)
        return K - k > 32 ? _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(scales[k / 32]),
                                                 _mm512_set1_ps(scales[k / 32 + 1]))
                          : _mm512_set1_ps(scales[k / 32]);
    return _mm512_set1_ps(scales[k / group]);
}

/* qacc / qdots for N activation rows and `bits`-bit codes, by chunks of 64 code bytes (HERD_INT4_A8 or
   HERD_INT8_A8, each with its constants) scaled by a8_int4_scales or a8_int8_scales. */
#define HERD_QDOTS_A8(N, bits)                                                                                \
    static inline void qacc_a8_int##bits##_##N(const int8_t *codes, const float *scales, long group,         \
                                               const int8_t *const *xq, long K, __m512 *acc) {                \
        const __m512i flip = _mm512_set1_epi8((char)0x88), low = _mm512_set1_epi8(0x0F);                      \
        const __m512i top = _mm512_set1_epi8((char)0x80);                                                     \
        const long bytes = CODE_BYTES(bits, K);                                                               \
        (void)flip, (void)low, (void)top;                                                                     \
        for (int b = 0; b < N; b++) acc[b] = _mm512_setzero_ps();                                             \
        if (group == 32) { /* the common case, its scales' layout known to the compiler */                   \
            for (long j = 0; j < bytes; j += 64)                                                              \
                HERD_INT##bits##_A8(N, j, bytes - j, a8_int##bits##_scales(scales, 32, j, bytes))             \
        } else {                                                                                              \
            for (long j = 0; j < bytes; j += 64)                                                              \
                HERD_INT##bits##_A8(N, j, bytes - j, a8_int##bits##_scales(scales, group, j, bytes))          \
        }                                                                                                     \
    }                                                                                                         \
    static inline void qdots_a8_int##bits##_##N(const int8_t *codes, const float *scales, long group,        \
                                                const int8_t *const *xq, long K, float *out) {                \
        __m512 acc[N];                                                                                        \
        qacc_a8_int##bits##_##N(codes, scales, group, xq, K, acc);                                            \
        for (int b = 0; b < N; b++) out[b] = _mm512_reduce_add_ps(acc[b]);                                    \
    }

HERD_QDOTS_A8(1, 4) HERD_QDOTS_A8(2, 4) HERD_QDOTS_A8(3, 4) HERD_QDOTS_A8(4, 4)
HERD_QDOTS_A8(1, 8) HERD_QDOTS_A8(2, 8) HERD_QDOTS_A8(3, 8) HERD_QDOTS_A8(4, 8)

/* out[b] for n quantized activation rows xq (a8_quantize for `bits`), any n. */
static inline void qdots_a8(int bits, const int8_t *codes, const float *scales, long group, const int8_t *const *xq,
                            long n, long K, float *out) {
    typedef void (*fn)(const int8_t *, const float *, long, const int8_t *const *, long, float *);
    static const fn int4_fns[5] = {0, qdots_a8_int4_1, qdots_a8_int4_2, qdots_a8_int4_3, qdots_a8_int4_4};
    static const fn int8_fns[5] = {0, qdots_a8_int8_1, qdots_a8_int8_2, qdots_a8_int8_3, qdots_a8_int8_4};
    const fn *fns = bits == 4 ? int4_fns : int8_fns;
    for (; n > 0; n -= 4, xq += 4, out += 4) fns[n < 4 ? n : 4](codes, scales, group, xq, K, out);
}

/* qdots16_bf16 for one quantized activation row: out[i] for i < count ≤ 16 rows, bit for bit qdots_a8's. */
static inline void qdots16_a8(int bits, const int8_t *codes, long row_bytes, const float *scales, long row_scales,
                              long group, const int8_t *xq, long K, long count, float *out) {
    __m512 acc[16];
    for (long i = 0; i < 16; i++) {
        if (i >= count) acc[i] = _mm512_setzero_ps();
        else if (bits == 4) qacc_a8_int4_1(codes + i * row_bytes, scales + i * row_scales, group, &xq, K, acc + i);
        else qacc_a8_int8_1(codes + i * row_bytes, scales + i * row_scales, group, &xq, K, acc + i);
    }
    put_sums16(acc, out);
}
