#ifndef LORA_TOOL_PRODUCT_KERNEL_H
#define LORA_TOOL_PRODUCT_KERNEL_H
#include <stddef.h>

/* Row-major matrix products in one fixed summation order, for verification and tests (never
 * BLAS, whose order depends on the kernel it picks for the CPU):
 *
 *   acc[i][j] = Σ_p op(A)[i][p] · op(B)[p][j]   summed over p = 0 … k-1 in order, a product then
 *                                               an add per term (no fused multiply-add)
 *   C[i][j]   = beta == 0 ? alpha · acc[i][j] : beta · C[i][j] + alpha · acc[i][j]
 *
 * op(A) is m×k: A stored m×k with row stride lda, or (trans_a) k×m with row stride lda; op(B) is
 * k×n: B stored k×n (ldb) or (trans_b) n×k (ldb). C is m×n with row stride n. Portable C: the same
 * bits on every CPU. Returns 0, or 1 when a working copy could not be allocated (nothing written). */
int lora_product_f32(size_t m, size_t n, size_t k, float alpha, const float *a, int trans_a, size_t lda,
                     const float *b, int trans_b, size_t ldb, float beta, float *c);
int lora_product_f64(size_t m, size_t n, size_t k, double alpha, const double *a, int trans_a, size_t lda,
                     const double *b, int trans_b, size_t ldb, double beta, double *c);
#endif
