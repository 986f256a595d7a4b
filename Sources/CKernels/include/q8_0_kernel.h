#ifndef LORA_TOOL_Q8_0_KERNEL_H
#define LORA_TOOL_Q8_0_KERNEL_H
#include "kernels_isa.h"
#include <stddef.h>
#include <stdint.h>

/* ggml's Q8_0 blocks (ggml/src/ggml-common.h `block_q8_0`): 32 elements in 34 bytes, a little-endian
 * IEEE half scale d at bytes 0–1, then the 32 signed byte codes q[j] at bytes 2 + j. Element j
 * decodes to (float)q[j] · (float)d, one fp32 multiply.
 *
 * These kernels reproduce the reference Swift code (GGUF's GGMLDequantizer.q8_0 and
 * GGMLQuantizer.q8_0, themselves bit-exact with ggml's dequantize_row_q8_0 / quantize_row_q8_0_ref
 * and gguf-py) bit for bit, on every instruction set. `isa` is LORA_ISA_BEST or one at most
 * lora_best_isa() (LORA_ISA_AVX512 runs the AVX2 code, LORA_ISA_SCALAR portable C); an instruction
 * set this CPU lacks returns LORA_Q8_0_UNSUPPORTED with nothing written. No contraction of a
 * multiply and an add into a fused multiply-add anywhere. Pointers need no alignment. */
enum { LORA_Q8_0_UNSUPPORTED = 4 };

/* Decodes `blocks` Q8_0 blocks at `in` into 32 · blocks floats at `out`. Returns 0, or
 * LORA_Q8_0_UNSUPPORTED. */
uint32_t lora_q8_0_decode_isa(int isa, const uint8_t *in, size_t blocks, float *out);

/* Encodes 32 · blocks finite floats as `blocks` Q8_0 blocks, quantize_row_q8_0_ref per block of x:
 *
 *   amax = max |x[j]|                        (+0 for an all-zero block)
 *   d    = amax / 127                        (fp32, one rounding; stored rounded to a half, nearest
 *                                             even, overflowing to infinity)
 *   id   = d ≠ 0 ? 1 / d : 0                 (fp32, from the unrounded d)
 *   q[j] = low byte of cvtt(roundf(x[j] · id))
 *
 * the product in fp32, roundf rounding half away from zero, and the float-to-int32 conversion as
 * x86-64's cvttss2si (toward zero; INT32_MIN for NaN and out-of-range values, which only an
 * all-subnormal block can produce). Returns 0 when every value is finite; else the index + 1 of the
 * first NaN or infinity, and the output is unspecified. LORA_Q8_0_UNSUPPORTED is returned through
 * `status` (0 when supported). */
size_t lora_q8_0_encode_isa(int isa, const float *values, size_t blocks, uint8_t *out, uint32_t *status);

/* Encodes as lora_q8_0_encode_isa, and also compares with `old`, the Q8_0 blocks the same elements
 * had before (the base tensor's): *changed = the number of blocks whose 34 bytes differ from old's,
 * and for the requantization report, with b = old's decoded value, t = the value encoded and s =
 * the new block's decoded value of each element (want = t − b, got = s − b, widened to double,
 * differences and products in double):
 *
 *   sums = { Σ want·got, Σ want², Σ got² }
 *
 * each accumulated in four partial sums by element index mod 4 and added as (s0 + s1) + (s2 + s3):
 * the order of lora_delta_sums over the same three arrays, so the same sums on every CPU. Returns as
 * lora_q8_0_encode_isa (sums and changed unspecified when a value is not finite). */
size_t lora_q8_0_requantize_isa(int isa, const float *values, const uint8_t *old, size_t blocks, uint8_t *out,
                                double sums[3], size_t *changed, uint32_t *status);
#endif
