#ifndef LORA_TOOL_FP8_KERNEL_H
#define LORA_TOOL_FP8_KERNEL_H
#include "kernels_isa.h"
#include <stddef.h>
#include <stdint.h>

/* Block-scaled FP8 E4M3 weights, as transformers' fine-grained fp8 stores them: a [rows, cols]
 * weight, row-major, one byte per element; element e (row e / cols, column e % cols) belongs to
 * block (row / block_rows) * grid_cols + column / block_cols, grid_cols = ceil(cols / block_cols),
 * whose fp32 scales are indexed by that block number (the last blocks of a row or column may be
 * partial). Every kernel takes a range of elements [first, first + count) of such a weight, with
 * its per-element arrays (values, codes, outputs) holding just that range (index e - first) and
 * its per-block arrays indexed by absolute block number. cols, block_rows, block_cols >= 1.
 *
 * E4M3 ("fn", torch's float8_e4m3fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits; largest
 * finite +-448 (0x7E); codes 0x7F / 0xFF are NaN and decode to the positive quiet NaN 0x7FC00000;
 * subnormals m * 2^-9. Encoding rounds to nearest, ties to even; magnitudes from 480 and NaN
 * encode as sign | 0x7F. These are the rules of Swift's FP8E4M3.encode / decode, bit for bit.
 *
 * Every instruction set (`isa` as for lora_merge_rows: LORA_ISA_BEST or one at most
 * lora_best_isa(); LORA_ISA_SCALAR is portable C, LORA_ISA_AVX2 / LORA_ISA_AVX512 the same
 * arithmetic on 16-lane vectors) gives the same bytes. The _isa functions return
 * LORA_FP8_UNSUPPORTED (nothing written) for an instruction set this CPU lacks, else 0. No
 * multiply and add are ever fused. */
enum { LORA_FP8_UNSUPPORTED = 4 };

/* For each block the range touches: amax[block] = max(amax[block], max |values[i]|) over its
 * elements in the range (NaN values ignored, so an all-NaN run leaves amax unchanged). The caller
 * starts amax at +0. */
uint32_t lora_fp8_block_absmax_isa(int isa, const float *values, size_t first, size_t count, size_t cols, size_t block_rows,
                                   size_t block_cols, float *amax);

/* Quantizes a range of fp32 values; per element i of block b:
 *
 *   t        = values[i] * forward[b]                     (fp32, one rounding)
 *   t        = min(max(t, -448), 448)                     (NaN passes through)
 *   codes[i] = e4m3(t)                                    (nearest even)
 *   back[i]  = round_format(decode(codes[i]) * stored[b])  (fp32 product, then one rounding)
 *
 * back in `back_format` (LORA_F32 / LORA_F16 / LORA_BF16, little-endian, any alignment),
 * rounded as every kernel and Swift's FloatCodec.encode round (nearest even, NaN kept quiet). */
uint32_t lora_fp8_block_quantize_isa(int isa, const float *values, size_t first, size_t count, size_t cols, size_t block_rows,
                                     size_t block_cols, const float *forward, const float *stored, uint8_t *codes,
                                     int back_format, void *back);

/* Decodes a range of codes: out[i] = round_format(decode(codes[i]) * scales[b]) (fp32 product,
 * then one rounding to out_format, as for `back` above). */
uint32_t lora_fp8_block_decode_isa(int isa, const uint8_t *codes, size_t first, size_t count, size_t cols, size_t block_rows,
                                   size_t block_cols, const float *scales, int out_format, void *out);

/* The number of i < count with a[i] != b[i]. Portable C. */
size_t lora_bytes_differing(const uint8_t *a, const uint8_t *b, size_t count);
#endif
