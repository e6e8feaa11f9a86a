/* One decode step of the Llama 4 decoder, token ids to final-norm hidden states and logits, in one call.
   Included by decode_bf16.c and decode_f32.c, which define the element type and its arithmetic:

     T            the element type of weights, activations and the KV cache
     LOAD(v)      an element as fp32;  STORE(v) fp32 to an element (rounding);  ROUND(v) STORE then LOAD
     DOT(w, x, K) the fp32 dot product of two rows of K elements
     mean_square  mean(x²) of n elements in fp32
     NAME         the exported function

   The same computation as herd.model.Transformer.hidden for one new token per row (row b in KV slot
   slots[b] at absolute position positions[b]), followed by the LM head, rounding to T where the eager
   model rounds: after every projection, norm, activation and residual add. RoPE, norms, softmax and the router's sigmoid run
   in fp32. The caller (herd/infer/native.py) checks shapes, dtypes and layouts and keeps the tensors
   alive. The structs' layout is mirrored by ctypes there.

   Why: compiled by inductor, the bf16 step of the benchmark model reads its layer weights at about
   20 GB/s and pays ~0.5 ms of graph-call overhead (guards, Python wrapper, ~160 barriers), where this
   reads them near bandwidth with ~11 barriers per layer (docs/BENCHMARKS.md).

   Work is shared by one OpenMP team: matrix-vector products split their weight rows into one contiguous
   range per thread, read in order (see matvec_bf16.c); attention splits rows × kv heads. Phases are
   separated by barriers.

   Shapes: B rows, D model dim, H heads, G kv heads (R = H / G per group), K head dim, E experts, F the
   SwiGLU hidden size of a layer, L positions a layer keeps per KV slot, V vocab. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quant.h"

#define MAX_ROWS 64  /* rows per step (herd.infer.native's max_batch) */

/* A weight matrix [N, K] (or a stack of experts' [E, N, K]) in one of the formats the step reads: the step's
   element type T (bits 0), or herd.quant's int8 / int4 codes with fp32 scales per group of `group` inputs
   (quant.h). Every product below goes through `wdots`, so the step is written once for all formats; the
   one exception is the bf16 step's LM head, which may come packed (bits PACKED, packed.h). */
typedef struct {
    const void *data;           /* T [N, K]; int8 codes [N, K] (bits 8) or [N, K/2] (bits 4); PACKED blocks */
    const float *scales;        /* [N, ceil(K / group)]; NULL for bits 0 and PACKED */
    int64_t bits, group;
    int64_t act_bits;           /* 8: codes against activations quantized to int8 (quant.h's VNNI products); else 0 */
} weight_t;

#define PACKED 1  /* weight_t.bits of a bf16 weight in packed.h's layout (the LM head; PACKED_MATVEC steps) */

typedef struct {
    const T *attention_norm;    /* [D] */
    weight_t wqkv;              /* [(H + 2G)K, D]: q | k | v */
    weight_t wo;                /* [D, HK] */
    const T *ffn_norm;          /* [D] */
    const T *router;            /* [E, D]; NULL in a dense layer */
    const T *router_bias;       /* [E], selection only; NULL: none */
    weight_t w13;               /* MoE: routed experts [E, 2F, D]; dense: [2F, D] (gate | up); data NULL: none */
    weight_t w2;                /* MoE: [E, D, F]; dense: [D, F] */
    weight_t shared_w13;        /* [2F, D], MoE layers */
    weight_t shared_w2;         /* [D, F] */
    T *k_cache, *v_cache;       /* [S, G, L, K] for the pool's S slots, post-RoPE keys */
    int64_t length;             /* L: positions per slot (the context, or the ring of `chunk`) */
    int64_t chunk;              /* ring of `chunk` slots; 0: global (slot = position) */
    int64_t hidden;             /* F */
    int32_t rope, qk_norm, temperature, unused;
} layer_t;

typedef struct {
    int64_t vocab, dim, n_heads, n_kv_heads, head_dim, n_layers, n_experts;
    float norm_eps, floor_scale, attn_scale, unused;
    const float *freq;          /* [K/2] RoPE frequencies */
    const T *embedding;         /* [V, D] */
    const T *norm;              /* [D] */
    weight_t output;            /* [V, D], the LM head */
    const layer_t *layers;      /* [n_layers] */
} model_t;

static inline long max_long(long a, long b) { return a > b ? a : b; }

/* The cache slot of an absolute position: the chunk ring's, or the position itself in a global layer. */
static inline long slot_of(const layer_t *ly, int64_t position) {
    return ly->chunk ? position % ly->chunk : position;
}

/* Expert e of a stack of experts [E, N, K]. */
static inline weight_t expert_of(const weight_t *w, long e, long N, long K) {
    weight_t out = *w;
    if (!w->bits) {
        out.data = (const T *)w->data + e * N * K;
    } else {
        out.data = (const int8_t *)w->data + e * N * CODE_BYTES(w->bits, K);
        out.scales = w->scales + e * N * SCALE_COUNT(K, w->group);
    }
    return out;
}

/* The activation rows as a product with w reads them: the rows themselves (T weights; int8 codes in fp32),
   or copies split into PHASES(bits) phases (quant.h's layout: the fp32 step's int4 even then odd inputs, the
   bf16 step's int8 two phases and int4 four) in this thread's `scratch`, xa the first phase and xb the
   second. */
typedef struct {
    const T *const *xs;
    const T *xa[MAX_ROWS], *xb[MAX_ROWS];
    const int8_t *xq[MAX_ROWS];  /* act_bits 8: the rows quantized (quant.h's a8_quantize) */
} rows_t;

/* out[p · P + i] = x[phases · i + p] (zero past K), P = phase_len(K, phases). */
static void phase_split(const T *x, long K, long phases, T *out) {
    const long P = phase_len(K, phases);
    for (long i = 0; i < P; i++)
        for (long p = 0; p < phases; p++) out[p * P + i] = phases * i + p < K ? x[phases * i + p] : (T)0;
}

static void prepare(rows_t *r, const weight_t *w, const T *const *xs, long B, long K, T *scratch) {
    const long phases = w->bits ? PHASES(w->bits) : 1, P = phase_len(K, phases);
    r->xs = xs;
    if (w->act_bits) {
        int8_t *q = (int8_t *)scratch;  /* 64-byte aligned (the step's allocation) */
        const long bytes = a8_row_bytes(K, (int)w->bits);
        for (long b = 0; b < B; b++) a8_quantize(xs[b], sizeof(T) == 2, K, (int)w->bits, r->xq[b] = q + b * bytes);
        return;
    }
    for (long b = 0; b < B; b++) {
        if (phases > 1) {
            T *rows = scratch + b * phases * P;
            phase_split(xs[b], K, phases, rows);
            r->xa[b] = rows, r->xb[b] = rows + P;
        } else {
            r->xa[b] = r->xb[b] = xs[b];
        }
    }
}

/* out[i] = w[n] · rows[first + i] for i < nb, in fp32. */
/* Inlined into every loop (always_inline): called as a function per weight row it cost the bf16 step's layers
   up to 20% at 16 rows. */
static inline __attribute__((always_inline)) void wdots(const weight_t *w, long n, long K, const rows_t *r,
                                                        long first, long nb, float *out) {
    if (!w->bits) {
        DOTS((const T *)w->data + n * K, r->xs + first, nb, K, out);
    } else {
        const long row_bytes = CODE_BYTES(w->bits, K), row_scales = SCALE_COUNT(K, w->group);
        const int8_t *codes = (const int8_t *)w->data + n * row_bytes;
        const float *scales = w->scales + n * row_scales;
        prefetch_row((int)w->bits, codes, row_bytes, scales);
        if (w->act_bits) qdots_a8((int)w->bits, codes, scales, w->group, r->xq + first, nb, K, out);
        else QDOTS((int)w->bits, codes, scales, w->group, r->xa + first, r->xb + first, nb, K, out);
    }
}

/* Products go by blocks of BLOCK weight rows: d[i · nb + j] = w[n0 + i] · rows[first + j] for i < count ≤
   BLOCK, j < nb. One activation row of a quantized weight goes through QDOTS16 where the step has it (its
   horizontal sums done 16 at once); anything else row by row. Every `omp for` over a weight's rows runs
   over its blocks, so that loops over the same N split it alike among threads. d holds BLOCK · MAX_ROWS. */
#define BLOCK 16

static inline __attribute__((always_inline)) void wdots_block(const weight_t *w, long n0, long count, long K,
                                                              const rows_t *r, long first, long nb, float *d) {
    if (w->bits && nb == 1) {
        const long row_bytes = CODE_BYTES(w->bits, K), row_scales = SCALE_COUNT(K, w->group);
        const int8_t *codes = (const int8_t *)w->data + n0 * row_bytes;
        const float *scales = w->scales + n0 * row_scales;
        if (w->act_bits) {
            qdots16_a8((int)w->bits, codes, row_bytes, scales, row_scales, w->group, r->xq[first], K, count, d);
            return;
        }
#ifdef QDOTS16
        QDOTS16((int)w->bits, codes, row_bytes, scales, row_scales, w->group, r->xa[first], K, count, d);
        return;
#endif
    }
    for (long i = 0; i < count; i++) wdots(w, n0 + i, K, r, first, nb, d + i * nb);
}

static inline long block_rows(long n0, long N) { return N - n0 < BLOCK ? N - n0 : BLOCK; }

/* ys[b][n0 + i] = round(w[n0 + i] · xs[b]) for the block of weight rows from n0 (d: scratch for its products). */
static inline __attribute__((always_inline)) void gather_block(const weight_t *w, const rows_t *r, T *const *ys,
                                                               long B, long N, long K, long n0, float *d) {
    const long count = block_rows(n0, N);
    wdots_block(w, n0, count, K, r, 0, B, d);
    for (long i = 0; i < count; i++)
        for (long b = 0; b < B; b++) ys[b][n0 + i] = STORE(d[i * B + b]);
}

/* ys[b][n] = round(w[n] · xs[b]) for n < N, b < B: each weight row is read once for all B rows. An orphaned
   `omp for` without a barrier: the caller places one before the results are read. */
static void matvec_gather(const weight_t *w, const T *const *xs, T *const *ys, long B, long N, long K,
                          T *scratch) {
    rows_t r;
    float d[BLOCK * MAX_ROWS];
    prepare(&r, w, xs, B, K, scratch);
    #pragma omp for schedule(static) nowait
    for (long n0 = 0; n0 < N; n0 += BLOCK) gather_block(w, &r, ys, B, N, K, n0, d);
}

/* Blocks of the LM head a thread takes at a time when it is shared out dynamically (~0.5-1 MB of a head of 512
   inputs). */
#define HEAD_CHUNK 64

/* The LM head as matvec_rows (x [B, D] to logits [B, V]); no barrier. The head is most of a step's reads.
   Split into one contiguous range a thread, each thread streams it in order: read so, a one-row int4 head of the benchmark
   model ran at 70-76 GB/s where this machine's memory was fast, against 50-55 in blocks of HEAD_CHUNK taken in
   turn (2026-12-04). `dynamic` shares its blocks out as threads come for them: a thread that the OS takes off
   its core for a while (a server's event loop, woken as the head starts) then leaves its part to the others
   instead of making them wait for it at the end of the step. */
static void head_rows(const weight_t *w, const T *x, T *logits, long B, long V, long D, T *scratch, int dynamic) {
    const T *xs[MAX_ROWS];
    T *ys[MAX_ROWS];
    rows_t r;
    float d[BLOCK * MAX_ROWS];
    for (long b = 0; b < B; b++) xs[b] = x + b * D, ys[b] = logits + b * V;
    prepare(&r, w, xs, B, D, scratch);
    const long blocks = (V + BLOCK - 1) / BLOCK, threads = omp_get_num_threads();
    const long chunk = dynamic ? HEAD_CHUNK : (blocks + threads - 1) / threads;  /* one range a thread, else */
    #pragma omp for schedule(dynamic, chunk) nowait
    for (long i = 0; i < blocks; i++) gather_block(w, &r, ys, B, V, D, i * BLOCK, d);
}

/* y[b * y_stride + n] = round(w[n] · x[b * x_stride]) for n < N, b < B; as matvec_gather, no barrier. */
static void matvec_rows(const weight_t *w, const T *x, T *y, long B, long N, long K, long x_stride, long y_stride,
                        T *scratch) {
    const T *xs[MAX_ROWS];
    T *ys[MAX_ROWS];
    for (long b = 0; b < B; b++) xs[b] = x + b * x_stride, ys[b] = y + b * y_stride;
    matvec_gather(w, xs, ys, B, N, K, scratch);
}

/* x[b * D + n] = round(x[b * D + n] + round(w[n] · a[b * a_stride])) for n < D, b < B: a projection added to
   the residual stream. `omp for schedule(static)` over n with a barrier at the end. */
static void project_add(const weight_t *w, const T *a, T *x, long B, long D, long K, long a_stride,
                        T *scratch) {
    const T *as[MAX_ROWS];
    rows_t r;
    float d[BLOCK * MAX_ROWS];
    for (long b = 0; b < B; b++) as[b] = a + b * a_stride;
    prepare(&r, w, as, B, K, scratch);
    #pragma omp for schedule(static)
    for (long n0 = 0; n0 < D; n0 += BLOCK) {
        const long count = block_rows(n0, D);
        wdots_block(w, n0, count, K, &r, 0, B, d);
        for (long i = 0; i < count; i++)
            for (long b = 0; b < B; b++) x[b * D + n0 + i] = STORE(LOAD(x[b * D + n0 + i]) + ROUND(d[i * B + b]));
    }
}

/* out = round(round(x · rsqrt(mean(x²) + eps)) · w) as herd.ffn.RMSNorm rounds; w NULL: no weight (QK-norm).
   out may be x. */
static void rms_norm(const T *x, const T *w, T *out, long n, float eps) {
    const float r = 1.0f / sqrtf(mean_square(x, n) + eps);
    for (long k = 0; k < n; k++) {
        const float t = ROUND(LOAD(x[k]) * r);
        out[k] = w ? STORE(t * LOAD(w[k])) : STORE(t);
    }
}

/* Interleaved pairs (2i, 2i+1) rotated by the angles of cos_sin (cos, sin of position · freq[i], computed
   once per row and step), as herd.rope.apply_rope. */
static void rotate(T *v, const float *cos_sin, long K) {
    for (long i = 0; i < K / 2; i++) {
        const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
        const float even = LOAD(v[2 * i]), odd = LOAD(v[2 * i + 1]);
        v[2 * i] = STORE(even * c - odd * s);
        v[2 * i + 1] = STORE(even * s + odd * c);
    }
}

/* e^x in fp32, 16 lanes: 2^n · e^r with n = round(x · log2 e) and |r| ≤ ln 2 / 2, e^r = 1 + r + r² · P(r) with
   Cephes' expf coefficients (within ~1 ulp of expf); past ±88.7 the result overflows to inf or flushes to 0 as
   expf's does (scalef). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* out[j] = round(round(silu(gate[j])) · up[j]) for j < n ≤ 16, as herd.ffn rounds (silu(g) = g / (1 + e^-g) in
   fp32): sixteen at a time, where expf one by one cost the benchmark model's step ~40 µs. */
static inline void swiglu16(const T *gate, const T *up, T *out, long n) {
    const __mmask16 m = tail16(n);
    const __m512 g = LOAD16(gate, m);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = ROUND16(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    STORE16(out, _mm512_mul_ps(silu, LOAD16(up, m)), m);
}

/* R query heads of one kv group against its slots 0 … n-1; scores_RL holds R × n floats. fp32 softmax. */
static void attend(const T *q_RK, const T *k_LK, const T *v_LK, long n, long R, long K,
                   float *scores_RL, T *out_RK) {
    const float scale = 1.0f / sqrtf((float)K);
    float max_R[R], sum_R[R], acc_RK[R * K];
    for (long r = 0; r < R; r++) max_R[r] = -INFINITY, sum_R[r] = 0.0f;
    for (long l = 0; l < n; l++)
        for (long r = 0; r < R; r++) {
            const float s = DOT(k_LK + l * K, q_RK + r * K, K) * scale;
            scores_RL[r * n + l] = s;
            if (s > max_R[r]) max_R[r] = s;
        }
    for (long r = 0; r < R; r++)
        for (long l = 0; l < n; l++) {
            const float e = expf(scores_RL[r * n + l] - max_R[r]);
            scores_RL[r * n + l] = e;
            sum_R[r] += e;
        }
    for (long i = 0; i < R * K; i++) acc_RK[i] = 0.0f;
    for (long l = 0; l < n; l++) {
        const T *v = v_LK + l * K;
        for (long r = 0; r < R; r++) {
            const float p = scores_RL[r * n + l];
            float *acc = acc_RK + r * K;
            for (long k = 0; k < K; k++) acc[k] += p * LOAD(v[k]);
        }
    }
    for (long r = 0; r < R; r++)
        for (long k = 0; k < K; k++) out_RK[r * K + k] = STORE(acc_RK[r * K + k] / sum_R[r]);
}

long herd_argmax(const void *x, long n, int bf16);  /* argmax.c */

/* The first largest of the logits of row b, from the first largest of each of its `parts` (best_P): the
   first NaN wins, as in herd_argmax; equal values keep the earlier part's. */
static long combine_argmax(const T *logits_V, const int64_t *best_P, long parts) {
    long out = best_P[0];
    for (long p = 1; p < parts; p++) {
        const float have = LOAD(logits_V[out]), value = LOAD(logits_V[best_P[p]]);
        if (isnan(have)) break;
        if (isnan(value) || value > have) out = best_P[p];
    }
    return out;
}

/* The final-norm hidden states go to out [B, D] and, unless logits_BV is NULL, their logits to logits_BV [B, V];
   with argmax_B, each row's greedy token too (the first largest logit, a NaN counting as the largest, as
   torch.argmax): found by the step's threads while the logits are still in their caches. With wake_fd >= 0,
   one byte is written to it as the LM head starts (a server's cue to deliver the previous step's tokens).
   Returns 0; -1 when scratch memory cannot be allocated, -2 for a token id outside the vocabulary, -3 for a
   position outside a layer's cache, -4 for a slot outside the pool of n_slots, -5 for more than MAX_ROWS rows.
   Nothing is written on an error. */
int NAME(const model_t *m, const int64_t *tokens, const int64_t *positions, const int64_t *slots, int64_t n_slots,
         int64_t B, T *out, T *logits_BV, int64_t *argmax_B, int wake_fd, int threads) {
    const long D = m->dim, H = m->n_heads, G = m->n_kv_heads, K = m->head_dim, R = H / G, E = m->n_experts;
    const long QKV = (H + 2 * G) * K;
    const float eps = m->norm_eps;
    long F = 1, L = 1;  /* L: the most slots any query attends to in this step */
    if (B < 1) return 0;
    if (B > MAX_ROWS) return -5;
    for (long b = 0; b < B; b++) {
        if (tokens[b] < 0 || tokens[b] >= m->vocab) return -2;
        if (positions[b] < 0) return -3;
        if (slots[b] < 0 || slots[b] >= n_slots) return -4;
    }
    for (long i = 0; i < m->n_layers; i++) {
        const layer_t *ly = &m->layers[i];
        if (ly->hidden > F) F = ly->hidden;
        for (long b = 0; b < B; b++) {
            const long slot = slot_of(ly, positions[b]);
            if (slot >= ly->length) return -3;
            if (slot + 1 > L) L = slot + 1;
        }
    }
    /* x: the residual stream; xn: normed input; xs: the routed experts' (score-scaled) input */
    T *buf = malloc(sizeof(T) * B * (4 * D + QKV + H * K + 6 * F + (E ? E : 1)));
    int64_t *expert_B = malloc(sizeof(int64_t) * B);
    float *cos_sin_BK = malloc(sizeof(float) * B * K);
    const long parts = threads < 1 ? 1 : threads < m->vocab ? threads : m->vocab;  /* pieces of a row's argmax */
    int64_t *best_BP = malloc(sizeof(int64_t) * B * parts);
    if (!buf || !expert_B || !cos_sin_BK || !best_BP) {
        free(buf), free(expert_B), free(cos_sin_BK), free(best_BP);
        return -1;
    }
    T *x = buf, *xn = x + B * D, *xs = xn + B * D, *shared_out = xs + B * D, *qkv = shared_out + B * D;
    T *att = qkv + B * QKV, *h13 = att + B * H * K, *h13_routed = h13 + B * 2 * F, *act = h13_routed + B * 2 * F;
    T *act_routed = act + B * F, *logits = act_routed + B * F;
    int failed = 0;

    #pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(sizeof(float) * R * L);
        const long Kmax = max_long(max_long(D, H * K), F);
        /* the activations split into phases, or quantized (prepare): the larger of the two layouts */
        const long a8_int4 = a8_row_bytes(Kmax, 4), a8_int8 = a8_row_bytes(Kmax, 8), phases = sizeof(T) * (Kmax + 3);
        const long xf_bytes = B * max_long(max_long(a8_int4, a8_int8), phases);  /* a8: int4's for K ≤ 64 */
        T *xf = aligned_alloc(64, (xf_bytes + 63) / 64 * 64);
        /* this thread's copy of the expert groups: rows in group order, their inputs and outputs */
        long row_of[B], group_start[B + 1], group_expert[B];
        const T *xs_of[B];
        T *h13_of[B], *act_of[B];
        float routed[BLOCK * MAX_ROWS];
        group_start[0] = 0;
        if (!scores || !xf) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        if (!failed) {
            #pragma omp for
            for (long b = 0; b < B; b++) {
                memcpy(x + b * D, m->embedding + tokens[b] * D, sizeof(T) * D);
                for (long i = 0; i < K / 2; i++) {  /* fp32 angles, as herd.rope.angles */
                    const float angle = (float)positions[b] * m->freq[i];
                    cos_sin_BK[b * K + 2 * i] = cosf(angle), cos_sin_BK[b * K + 2 * i + 1] = sinf(angle);
                }
            }

            for (long layer = 0; layer < m->n_layers; layer++) {
                const layer_t *ly = &m->layers[layer];
                const long Fl = ly->hidden, chunks = (Fl + 15) / 16;  /* swiglu16's */

                /* attention */
                #pragma omp for
                for (long b = 0; b < B; b++) rms_norm(x + b * D, ly->attention_norm, xn + b * D, D, eps);
                matvec_rows(&ly->wqkv, xn, qkv, B, QKV, D, D, QKV, xf);
                #pragma omp barrier
                #pragma omp for
                for (long i = 0; i < B * (H + G); i++) {  /* q and k heads */
                    const long b = i / (H + G), j = i % (H + G);
                    T *v = qkv + b * QKV + j * K;
                    if (ly->rope) {
                        rotate(v, cos_sin_BK + b * K, K);
                        if (ly->qk_norm) rms_norm(v, NULL, v, K, eps);
                    } else if (ly->temperature && j < H) {
                        const float floors = floorf(((float)positions[b] + 1.0f) / m->floor_scale);
                        const float scale = log1pf(floors) * m->attn_scale + 1.0f;
                        for (long k = 0; k < K; k++) v[k] = STORE(LOAD(v[k]) * scale);
                    }
                }
                #pragma omp for
                for (long i = 0; i < B * G; i++) {  /* a (row, kv group) writes and then reads only its own cache */
                    const long b = i / G, g = i % G, slot = slot_of(ly, positions[b]);
                    const long base = (slots[b] * G + g) * ly->length * K;
                    memcpy(ly->k_cache + base + slot * K, qkv + b * QKV + (H + g) * K, sizeof(T) * K);
                    memcpy(ly->v_cache + base + slot * K, qkv + b * QKV + (H + G + g) * K, sizeof(T) * K);
                    attend(qkv + b * QKV + g * R * K, ly->k_cache + base, ly->v_cache + base, slot + 1, R, K, scores,
                           att + b * H * K + g * R * K);
                }
                project_add(&ly->wo, att, x, B, D, H * K, H * K, xf);

                /* feed-forward */
                #pragma omp for
                for (long b = 0; b < B; b++) rms_norm(x + b * D, ly->ffn_norm, xn + b * D, D, eps);
                if (ly->router) {
                    #pragma omp for
                    for (long i = 0; i < B * E; i++) logits[i] = STORE(DOT(ly->router + (i % E) * D, xn + (i / E) * D, D));
                    #pragma omp for
                    for (long b = 0; b < B; b++) {  /* top-1: the first largest (biased) logit, scored unbiased */
                        long best = 0;
                        float best_value = -INFINITY;
                        for (long e = 0; e < E; e++) {
                            float value = LOAD(logits[b * E + e]);
                            if (ly->router_bias) value = ROUND(value + LOAD(ly->router_bias[e]));
                            if (value > best_value || e == 0) best = e, best_value = value;
                        }
                        expert_B[b] = best;
                        const float score = ROUND(1.0f / (1.0f + expf(-LOAD(logits[b * E + best]))));
                        for (long k = 0; k < D; k++) xs[b * D + k] = STORE(LOAD(xn[b * D + k]) * score);
                    }
                    /* rows grouped by expert (in row order within one), so that each routed expert's weights
                       are read once per step however many rows chose it; every thread builds the same groups */
                    long n_groups = 0;
                    for (long e = 0; e < E; e++) {
                        long n = 0;
                        for (long b = 0; b < B; b++)
                            if (expert_B[b] == e) {
                                const long r = group_start[n_groups] + n++;
                                row_of[r] = b;
                                xs_of[r] = xs + b * D, h13_of[r] = h13_routed + b * 2 * F, act_of[r] = act_routed + b * F;
                            }
                        if (n) group_expert[n_groups] = e, group_start[n_groups + 1] = group_start[n_groups] + n, n_groups++;
                    }
                    matvec_rows(&ly->shared_w13, xn, h13, B, 2 * Fl, D, D, 2 * F, xf);
                    for (long g = 0; g < n_groups; g++) {
                        const long first = group_start[g];
                        const weight_t w13 = expert_of(&ly->w13, group_expert[g], 2 * Fl, D);
                        matvec_gather(&w13, xs_of + first, h13_of + first, group_start[g + 1] - first, 2 * Fl, D, xf);
                    }
                    #pragma omp barrier
                    #pragma omp for
                    for (long i = 0; i < B * chunks; i++) {
                        const long b = i / chunks, j = 16 * (i % chunks);
                        swiglu16(h13 + b * 2 * F + j, h13 + b * 2 * F + Fl + j, act + b * F + j, Fl - j);
                        swiglu16(h13_routed + b * 2 * F + j, h13_routed + b * 2 * F + Fl + j, act_routed + b * F + j,
                                 Fl - j);
                    }
                    /* Shared expert, then each group's routed expert over the same rows: static schedules of
                       equal length give every thread the same n in all these loops, so no barrier between. */
                    matvec_rows(&ly->shared_w2, act, shared_out, B, D, Fl, F, D, xf);
                    rows_t routed_rows;
                    prepare(&routed_rows, &ly->w2, (const T *const *)act_of, B, Fl, xf);  /* all groups at once */
                    for (long g = 0; g < n_groups; g++) {
                        const weight_t w2 = expert_of(&ly->w2, group_expert[g], D, Fl);
                        const long first = group_start[g], nb = group_start[g + 1] - first;
                        #pragma omp for schedule(static) nowait
                        for (long n0 = 0; n0 < D; n0 += BLOCK) {
                            const long count = block_rows(n0, D);
                            wdots_block(&w2, n0, count, Fl, &routed_rows, first, nb, routed);
                            for (long i = 0; i < count; i++)
                                for (long r = 0; r < nb; r++) {
                                    const long b = row_of[first + r], n = n0 + i;
                                    const float ffn = ROUND(LOAD(shared_out[b * D + n]) + ROUND(routed[i * nb + r]));
                                    x[b * D + n] = STORE(LOAD(x[b * D + n]) + ffn);
                                }
                        }
                    }
                    #pragma omp barrier
                } else {
                    matvec_rows(&ly->w13, xn, h13, B, 2 * Fl, D, D, 2 * F, xf);
                    #pragma omp barrier
                    #pragma omp for
                    for (long i = 0; i < B * chunks; i++) {
                        const long b = i / chunks, j = 16 * (i % chunks);
                        swiglu16(h13 + b * 2 * F + j, h13 + b * 2 * F + Fl + j, act + b * F + j, Fl - j);
                    }
                    project_add(&ly->w2, act, x, B, D, Fl, F, xf);
                }
            }
            #pragma omp for
            for (long b = 0; b < B; b++) rms_norm(x + b * D, m->norm, out + b * D, D, eps);
            if (wake_fd >= 0) {  /* the head's blocks are shared out dynamically: a woken thread costs it least */
                #pragma omp master
                {
                    const char byte = 1;
                    if (write(wake_fd, &byte, 1) < 0) { /* a full pipe is already a wake-up */ }
                }
            }
            if (logits_BV && m->output.bits == PACKED) {
#ifdef PACKED_MATVEC
                const T *xs_B[MAX_ROWS];
                T *ys_B[MAX_ROWS];
                for (long b = 0; b < B; b++) xs_B[b] = out + b * D, ys_B[b] = logits_BV + b * m->vocab;
                PACKED_MATVEC((const T *)m->output.data, xs_B, ys_B, B, m->vocab, D, wake_fd >= 0);
#endif
            } else if (logits_BV) {
                head_rows(&m->output, out, logits_BV, B, m->vocab, D, xf, wake_fd >= 0);
            }
            if (logits_BV && argmax_B) {
                const long V = m->vocab;
                #pragma omp barrier
                #pragma omp for
                for (long i = 0; i < B * parts; i++) {
                    const long b = i / parts, p = i % parts, start = V * p / parts, end = V * (p + 1) / parts;
                    best_BP[i] = start + herd_argmax(logits_BV + b * V + start, end - start, sizeof(T) == 2);
                }
            }
        }
        free(scores), free(xf);
    }
    if (!failed && logits_BV && argmax_B)
        for (long b = 0; b < B; b++) argmax_B[b] = combine_argmax(logits_BV + b * m->vocab, best_BP + b * parts, parts);
    free(buf), free(expert_B), free(cos_sin_BK), free(best_BP);
    return failed ? -1 : 0;
}
