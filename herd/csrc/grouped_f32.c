/* The fp32 grouped products: AVX512 fused multiply-adds, 16 elements of k per instruction. See grouped.h. */
#include "f32.h"

#define T float
#define VEC __m512
#define STEP 16
#define LOAD(p) _mm512_loadu_ps(p)
#define MASK(left) ((__mmask16)((1u << (left)) - 1))
#define LOADM(mask, p) _mm512_maskz_loadu_ps(mask, p)
#define MADD(acc, w, x) _mm512_fmadd_ps(w, x, acc)
#define STORE4(y, v) _mm_storeu_ps(y, v)
#define STORE1(y, v) (*(y) = (v))
#define DOT(w, x, K) dot_f32(w, x, K)
#define NAME herd_grouped_f32

#include "grouped.h"
