/* The fused merge kernel: see include/merge_kernel.h for the contract.
 *
 * One summation order, three instruction sets. Per output element (i, j):
 *
 *   acc = 0; for k = 0 … rank-1 in order: acc = fma(b[i][k], a[k][j], acc)   (one rounding each)
 *   delta = acc · coefficient                                                  (one rounding)
 *   y = w[i][j] + delta                                                        (one rounding)
 *   out[i][j] = round_out(y)                                                   (nearest even)
 *
 * The scalar path below is that loop in portable C (explicit fmaf; no intrinsics, so it builds on
 * any target). The vector paths are written once over 16-float generic vectors (clang vector
 * extensions) and compiled twice by inlining into functions with AVX-512 and AVX2 target attributes:
 * they vectorize across output columns j only, so every lane performs exactly the scalar sequence
 * of operations above and the three give identical bits. Per 4 rows × 16 columns everything stays
 * in registers (one load of A per 4 broadcast FMAs), then widen w, add, check finiteness and round.
 * Memory traffic is one read of w and one write of out; A is packed tile by tile once per call. */
#include "merge_kernel.h"
#include "vectors.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* PEFT rounds the product, the scaled product and the sum separately: no contraction into FMAs
   beyond the explicit ones of the dot product, in any path. */
#pragma STDC FP_CONTRACT OFF

struct job {
    const unsigned char *w;
    int in_format;
    unsigned char *out;
    int out_format;
    size_t rows, cols, rank, lda;
    const float *b, *a;
    float coefficient;
};

/* Columns per step of the scalar path: the r-sum of 16 outputs at a time, so A is read row by row. */
#define SCALAR_COLUMNS 16

static uint32_t run_scalar(const struct job *jb) {
    uint32_t yflags = 0, wflags = 0;
    size_t in_size = scalar_format_size(jb->in_format), out_size = scalar_format_size(jb->out_format);
    float acc[SCALAR_COLUMNS];
    for (size_t i = 0; i < jb->rows; i++) {
        for (size_t j0 = 0; j0 < jb->cols; j0 += SCALAR_COLUMNS) {
            size_t n = jb->cols - j0 < SCALAR_COLUMNS ? jb->cols - j0 : SCALAR_COLUMNS;
            for (size_t l = 0; l < n; l++) acc[l] = 0.0f;
            for (size_t k = 0; k < jb->rank; k++) {
                float bk = jb->b[i * jb->rank + k];
                const float *ak = jb->a + k * jb->lda + j0;
                for (size_t l = 0; l < n; l++) acc[l] = fmaf(bk, ak[l], acc[l]);
            }
            for (size_t l = 0; l < n; l++) {
                size_t e = i * jb->cols + j0 + l;
                scalar_add_and_store(jb->w + e * in_size, jb->in_format, jb->out + e * out_size, jb->out_format, acc[l] * jb->coefficient,
                                     &yflags, &wflags);
            }
        }
    }
    return (yflags ? LORA_RESULT_NONFINITE : 0) | (wflags ? LORA_INPUT_NONFINITE : 0);
}

#if LORA_VECTOR_KERNELS

/* Rows [i0, i0 + R) × columns [j, j + 16) (or the n < 16 last ones); `pa` is A's rank × 16 slice
   for these columns, packed contiguously (zeros past n). */
INLINE void tile(const struct job *jb, const float *pa, size_t i0, int R, size_t j, size_t n, int full, v16u *yflags, v16u *wflags) {
    v16f acc[4] = {0};
    for (size_t k = 0; k < jb->rank; k++) {
        v16f ak;
        memcpy(&ak, pa + 16 * k, 64);
        for (int r = 0; r < R; r++)
            acc[r] = __builtin_elementwise_fma(splat(jb->b[(i0 + r) * jb->rank + k]), ak, acc[r]);
    }
    size_t in_size = format_size(jb->in_format), out_size = format_size(jb->out_format);
    for (int r = 0; r < R; r++) {
        size_t e = (i0 + r) * jb->cols + j;
        add_and_store(jb->w + e * in_size, jb->in_format, jb->out + e * out_size, jb->out_format, acc[r] * jb->coefficient, n, full, yflags, wflags);
    }
}

/* Columns [j0, j1) of rows [i0, i0 + R), with A's columns [j0, j1) packed at `pa` tile by tile. */
INLINE void rows_of(const struct job *jb, const float *pa, size_t i0, int R, size_t j0, size_t j1, v16u *yflags, v16u *wflags) {
    size_t j = j0;
    for (; j + 16 <= j1; j += 16) tile(jb, pa + (j - j0) * jb->rank, i0, R, j, 16, 1, yflags, wflags);
    if (j < j1) tile(jb, pa + (j - j0) * jb->rank, i0, R, j, j1 - j, 0, yflags, wflags);
}

INLINE uint32_t run(const struct job *jb, float *pa) {
    v16u yflags = {0}, wflags = {0};
    /* A packed (pack_tiles): a tile is one sequential 1 KiB read (r = 16) from L2 per 4 rows. Rows
       are then walked in order, so w and out stream. */
    pack_tiles(jb->a, jb->rank, jb->lda, jb->cols, pa);
    size_t i = 0;
    for (; i + 4 <= jb->rows; i += 4) rows_of(jb, pa, i, 4, 0, jb->cols, &yflags, &wflags);
    for (; i < jb->rows; i++) rows_of(jb, pa, i, 1, 0, jb->cols, &yflags, &wflags);
    return lane_flags(yflags, wflags);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static uint32_t run_avx512(const struct job *jb, float *pa) { return run(jb, pa); }

__attribute__((target("avx2,fma,f16c")))
static uint32_t run_avx2(const struct job *jb, float *pa) { return run(jb, pa); }

#endif

uint32_t lora_merge_rows(int isa, const void *w, int in_format, void *out, int out_format, size_t rows, size_t cols,
                         const float *b, size_t rank, const float *a, size_t lda, float coefficient) {
    int best = lora_best_isa();
    if (isa == LORA_ISA_BEST) isa = best;
    if (isa < LORA_ISA_SCALAR || isa > best) return LORA_UNSUPPORTED;
    struct job jb = {w, in_format, out, out_format, rows, cols, rank, lda, b, a, coefficient};
    if (isa == LORA_ISA_SCALAR) return run_scalar(&jb);
#if LORA_VECTOR_KERNELS
    size_t packed = rank * ((cols + 15) / 16 * 16);
    float stack[4096] __attribute__((aligned(64)));
    float *pa = packed <= 4096 ? stack : aligned_alloc(64, (packed * sizeof(float) + 63) / 64 * 64);
    if (!pa) return LORA_UNSUPPORTED;
    uint32_t flags = isa == LORA_ISA_AVX512 ? run_avx512(&jb, pa) : run_avx2(&jb, pa);
    if (pa != stack) free(pa);
    return flags;
#else
    return LORA_UNSUPPORTED;
#endif
}
