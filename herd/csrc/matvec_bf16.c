/* bf16 matrix-vector products on AVX512-BF16 dot-product instructions (vdpbf16ps), fp32 accumulation.

   y[m, n] = sum_k x[m, k] * w[n, k], rounded to bf16 (nearest even); x [M, K], w [N, K] and y [M, N]
   are contiguous and row-major. Built and loaded by herd/cpu_kernels.py.

   Each thread takes a contiguous range of weight rows and reads them strictly in order, one row at a
   time, so the hardware prefetcher sees one sequential stream per core; the row then stays in L1 for
   the other rows of x: each chunk of the row is loaded once for up to eight rows of x (`row_dots`).
   (Interleaving four weight rows per step halved the bandwidth on the machines measured.) */
#include "bf16.h"

void herd_matvec_bf16(const uint16_t *x, const uint16_t *w, uint16_t *y, long M, long N, long K, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        const uint16_t *xs[M];
        float dots[M];
        for (long m = 0; m < M; m++) xs[m] = x + m * K;
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            row_dots(w + n * K, xs, M, K, dots);
            for (long m = 0; m < M; m++) y[m * N + n] = to_bf16(dots[m]);
        }
    }
}

/* The same product on a weight packed by herd.cpu_kernels.pack_bf16 (packed.h): y [M, N] from x [M, K] and
   the packed blocks of w [N, K], K even. */
#include "packed.h"

void herd_packed_matvec_bf16(const uint16_t *x, const uint16_t *wp, uint16_t *y, long M, long N, long K,
                             int threads) {
    #pragma omp parallel num_threads(threads)
    {
        const uint16_t *xs[M];
        uint16_t *ys[M];
        for (long m = 0; m < M; m++) xs[m] = x + m * K, ys[m] = y + m * N;
        packed_matvec(wp, xs, ys, M, N, K, 0);
    }
}
