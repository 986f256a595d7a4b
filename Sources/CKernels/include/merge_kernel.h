#ifndef LORA_TOOL_MERGE_KERNEL_H
#define LORA_TOOL_MERGE_KERNEL_H
#include <stddef.h>
#include <stdint.h>

#include "kernels_isa.h"
/* Included here too so that builds whose module cache predates it see it. */
#include "product_kernel.h"
#include "bnb4_kernel.h"
#include "q8_0_kernel.h"
#include "fp8_kernel.h"
#include "hadamard_kernel.h"

/* Flags returned by lora_merge_rows. */
enum {
    LORA_RESULT_NONFINITE = 1, /* some output value is NaN or ±inf (before rounding to the output format) */
    LORA_INPUT_NONFINITE = 2,  /* some input value of w is NaN or ±inf */
    LORA_UNSUPPORTED = 4       /* the requested instruction set does not run on this CPU: nothing computed */
};

/* One LoRA merge over a block of rows, fused: widen, rank-r update, check, round.
 *
 *   out[i][j] = round_out( w[i][j] + coefficient * Σ_k b[i*rank + k] * a[k*lda + j] )
 *
 * for i < rows, j < cols. w is rows×cols in `in_format` (row-major, contiguous); out is rows×cols in
 * `out_format`; b is rows×rank and a is rank×cols (row stride lda ≥ cols), both float32 row-major.
 * Arithmetic in float32 as PEFT's merge does it: the dot product accumulated over k in order with
 * fused multiply-adds, multiplied by the coefficient (one rounding), added to the widened w (one
 * rounding), then rounded once to the output format (nearest even; NaN stays a quiet NaN; F16 and
 * BF16 keep subnormals). `isa` is LORA_ISA_BEST or one at most lora_best_isa() (LORA_ISA_SCALAR
 * runs everywhere); a higher one returns LORA_UNSUPPORTED and computes nothing. Every instruction
 * set gives the same bits, for any split of the rows and columns into calls. `out` may be `w`
 * itself (same address, same format size): each element is read before it is written.
 * Returns LORA_* flags; 0: all finite. */
uint32_t lora_merge_rows(int isa, const void *w, int in_format, void *out, int out_format, size_t rows, size_t cols,
                         const float *b, size_t rank, const float *a, size_t lda, float coefficient);
#endif
