/* The fused LoHa kernel: see include/hadamard_kernel.h for the contract. The same structure as the
 * merge kernel (merge_kernel.c): a portable scalar path and 16-float generic vectors compiled for
 * AVX-512 and AVX2 that vectorize across output columns only, so every lane performs the scalar
 * sequence of operations and the three give identical bits; both factors' A tiles packed once per
 * call. */
#include "hadamard_kernel.h"
#include "merge_kernel.h"
#include "vectors.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#pragma STDC FP_CONTRACT OFF

struct hjob {
    const unsigned char *w;
    int in_format;
    unsigned char *out;
    int out_format;
    size_t rows, cols, rank, lda;
    const float *b1, *a1, *b2, *a2;
    float scale, weight;
};

#define SCALAR_COLUMNS 16

static uint32_t run_scalar(const struct hjob *jb) {
    uint32_t yflags = 0, wflags = 0;
    size_t in_size = scalar_format_size(jb->in_format), out_size = scalar_format_size(jb->out_format);
    float acc1[SCALAR_COLUMNS], acc2[SCALAR_COLUMNS];
    for (size_t i = 0; i < jb->rows; i++) {
        for (size_t j0 = 0; j0 < jb->cols; j0 += SCALAR_COLUMNS) {
            size_t n = jb->cols - j0 < SCALAR_COLUMNS ? jb->cols - j0 : SCALAR_COLUMNS;
            for (size_t l = 0; l < n; l++) acc1[l] = acc2[l] = 0.0f;
            for (size_t k = 0; k < jb->rank; k++) {
                float b1k = jb->b1[i * jb->rank + k], b2k = jb->b2[i * jb->rank + k];
                const float *a1k = jb->a1 + k * jb->lda + j0, *a2k = jb->a2 + k * jb->lda + j0;
                for (size_t l = 0; l < n; l++) {
                    acc1[l] = fmaf(b1k, a1k[l], acc1[l]);
                    acc2[l] = fmaf(b2k, a2k[l], acc2[l]);
                }
            }
            for (size_t l = 0; l < n; l++) {
                size_t e = i * jb->cols + j0 + l;
                scalar_add_and_store(jb->w + e * in_size, jb->in_format, jb->out + e * out_size, jb->out_format,
                                     ((acc1[l] * acc2[l]) * jb->scale) * jb->weight, &yflags, &wflags);
            }
        }
    }
    return (yflags ? LORA_RESULT_NONFINITE : 0) | (wflags ? LORA_INPUT_NONFINITE : 0);
}

#if LORA_VECTOR_KERNELS

/* Rows [i0, i0 + R) × columns [j, j + n): `p1`, `p2` are the two A tiles (rank × 16, packed). */
INLINE void hadamard_tile(const struct hjob *jb, const float *p1, const float *p2, size_t i0, int R, size_t j, size_t n, int full,
                          v16u *yflags, v16u *wflags) {
    v16f acc1[2] = {0}, acc2[2] = {0};
    for (size_t k = 0; k < jb->rank; k++) {
        v16f a1, a2;
        memcpy(&a1, p1 + 16 * k, 64);
        memcpy(&a2, p2 + 16 * k, 64);
        for (int r = 0; r < R; r++) {
            acc1[r] = __builtin_elementwise_fma(splat(jb->b1[(i0 + r) * jb->rank + k]), a1, acc1[r]);
            acc2[r] = __builtin_elementwise_fma(splat(jb->b2[(i0 + r) * jb->rank + k]), a2, acc2[r]);
        }
    }
    size_t in_size = format_size(jb->in_format), out_size = format_size(jb->out_format);
    for (int r = 0; r < R; r++) {
        size_t e = (i0 + r) * jb->cols + j;
        add_and_store(jb->w + e * in_size, jb->in_format, jb->out + e * out_size, jb->out_format, ((acc1[r] * acc2[r]) * jb->scale) * jb->weight,
                      n, full, yflags, wflags);
    }
}

INLINE void hadamard_rows_of(const struct hjob *jb, const float *p1, const float *p2, size_t i0, int R, v16u *yflags, v16u *wflags) {
    size_t j = 0;
    for (; j + 16 <= jb->cols; j += 16) hadamard_tile(jb, p1 + j * jb->rank, p2 + j * jb->rank, i0, R, j, 16, 1, yflags, wflags);
    if (j < jb->cols) hadamard_tile(jb, p1 + j * jb->rank, p2 + j * jb->rank, i0, R, j, jb->cols - j, 0, yflags, wflags);
}

INLINE uint32_t hadamard_run(const struct hjob *jb, const float *p1, const float *p2) {
    v16u yflags = {0}, wflags = {0};
    size_t i = 0;
    for (; i + 2 <= jb->rows; i += 2) hadamard_rows_of(jb, p1, p2, i, 2, &yflags, &wflags);
    for (; i < jb->rows; i++) hadamard_rows_of(jb, p1, p2, i, 1, &yflags, &wflags);
    return lane_flags(yflags, wflags);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static uint32_t hadamard_avx512(const struct hjob *jb, const float *p1, const float *p2) { return hadamard_run(jb, p1, p2); }

__attribute__((target("avx2,fma,f16c")))
static uint32_t hadamard_avx2(const struct hjob *jb, const float *p1, const float *p2) { return hadamard_run(jb, p1, p2); }

#endif

uint32_t lora_hadamard_rows(int isa, const void *w, int in_format, void *out, int out_format, size_t rows, size_t cols,
                            const float *b1, const float *a1, const float *b2, const float *a2, size_t rank, size_t lda,
                            float scale, float weight) {
    int best = lora_best_isa();
    if (isa == LORA_ISA_BEST) isa = best;
    if (isa < LORA_ISA_SCALAR || isa > best) return LORA_UNSUPPORTED;
    struct hjob jb = {w, in_format, out, out_format, rows, cols, rank, lda, b1, a1, b2, a2, scale, weight};
    if (isa == LORA_ISA_SCALAR) return run_scalar(&jb);
#if LORA_VECTOR_KERNELS
    size_t packed = rank * ((cols + 15) / 16 * 16);
    float *p = aligned_alloc(64, (2 * packed * sizeof(float) + 63) / 64 * 64);
    if (!p) return LORA_UNSUPPORTED;
    pack_tiles(a1, rank, lda, cols, p);
    pack_tiles(a2, rank, lda, cols, p + packed);
    uint32_t flags = isa == LORA_ISA_AVX512 ? hadamard_avx512(&jb, p, p + packed) : hadamard_avx2(&jb, p, p + packed);
    free(p);
    return flags;
#else
    return LORA_UNSUPPORTED;
#endif
}
