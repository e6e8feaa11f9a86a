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
