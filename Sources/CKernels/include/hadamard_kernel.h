#ifndef LORA_TOOL_HADAMARD_KERNEL_H
#define LORA_TOOL_HADAMARD_KERNEL_H
#include <stddef.h>
#include <stdint.h>

/* One LoHa merge over a block of rows, fused: widen, both rank-r products, their Hadamard product,
 * scale, add, check, round.
 *
 *   m1 = Σ_k b1[i*rank + k] * a1[k*lda + j]     (k in order, fused multiply-adds, from +0)
 *   m2 = Σ_k b2[i*rank + k] * a2[k*lda + j]     (the same)
 *   out[i][j] = round_out( w[i][j] + ((m1 * m2) * scale) * weight )   (each product, the add rounded)
 *
 * exactly the steps of LoHa's fp32 path (the two products by the merge kernel, then the Hadamard
 * step on the widened rows, then one rounding to the output format), in one pass over w. Formats,
 * flags, `isa` and `out` aliasing `w` as lora_merge_rows (merge_kernel.h): every instruction set
 * gives the same bits. */
uint32_t lora_hadamard_rows(int isa, const void *w, int in_format, void *out, int out_format, size_t rows, size_t cols,
                            const float *b1, const float *a1, const float *b2, const float *a2, size_t rank, size_t lda,
                            float scale, float weight);
#endif
