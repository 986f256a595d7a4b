#ifndef LORA_TOOL_BNB4_KERNEL_H
#define LORA_TOOL_BNB4_KERNEL_H
#include "kernels_isa.h"
#include <stddef.h>
#include <stdint.h>

/* bitsandbytes 4-bit (NF4 / FP4) blockwise codes, as transformers serializes them: element i of a
 * flattened weight has the 4-bit code in packed[i / 2], the HIGH nibble when i is even and the LOW
 * nibble when i is odd, and belongs to block i / blocksize, whose scale is absmax[i / blocksize].
 * These kernels reproduce the reference Swift code (LoRACore's BnbQuantization.dequantize and
 * BnbQuantizer.blockwise, themselves bit-exact with bitsandbytes) bit for bit, on every instruction
 * set. No contraction of a multiply and an add into a fused multiply-add anywhere. */

/* Decodes elements [first, first + count) of a 4-bit weight into `count` values of `out_format`
 * (LORA_F32 / LORA_F16 / LORA_BF16, little-endian, `out` any alignment):
 *
 *   out[i - first] = round_out( quant_map[code(i)] * absmax[i / blocksize] )
 *
 * the product in fp32 (one rounding), then rounded once to out_format (nearest even; NaN stays a
 * quiet NaN; F16 / BF16 subnormals kept), the rounding of every other kernel and of Swift's
 * FloatCodec.encode. `packed` and `absmax` are indexed by absolute element / block number (the
 * whole tensor's arrays); `absmax` holds the resolved fp32 scales (see lora_bnb4_resolve_absmax for
 * double-quantized weights). blocksize ≥ 1. */
void lora_bnb4_decode(const uint8_t *packed, size_t first, size_t count, const float *absmax, size_t blocksize,
                      const float quant_map[16], int out_format, void *out);

/* The same with an instruction set: `isa` as for lora_merge_rows (LORA_ISA_BEST, or one at most
 * lora_best_isa(); LORA_ISA_AVX2 and LORA_ISA_AVX512 both run the AVX2 table lookup,
 * LORA_ISA_SCALAR portable C). All give the same bytes. Returns LORA_BNB4_UNSUPPORTED (nothing
 * written) for an instruction set this CPU lacks, else 0. */
enum { LORA_BNB4_UNSUPPORTED = 4 };
uint32_t lora_bnb4_decode_isa(int isa, const uint8_t *packed, size_t first, size_t count, const float *absmax,
                              size_t blocksize, const float quant_map[16], int out_format, void *out);

/* Resolves double-quantized scales for blocks [first_block, first_block + count):
 *
 *   m      = nested_map[codes[b]] * nested_absmax[b / nested_blocksize]   (fp32, one rounding)
 *   out[j] = m + offset                                                   (fp32, one rounding)
 *
 * for b = first_block + j (`codes` and `nested_absmax` indexed by absolute block number), exactly as
 * bitsandbytes' dequantize_blockwise then `+ offset`: two roundings, never one fused multiply-add.
 * nested_blocksize ≥ 1. Portable C, the same bits on every CPU. */
void lora_bnb4_resolve_absmax(const uint8_t *codes, size_t first_block, size_t count, const float nested_map[256],
                              const float *nested_absmax, size_t nested_blocksize, float offset, float *out);

/* Quantizes `count` fp32 values, which start at a block boundary, blockwise (the last block may be
 * shorter). Per block of `blocksize` values x:
 *
 *   m       = max |x|                      (NaN values ignored; +0 for an all-zero block)
 *   inv     = 1 / max(m, 1e-38f)           (fp32, one rounding)
 *   scaled  = min(max(x * inv, -1), 1)     (fp32 product, one rounding; NaN stays NaN)
 *   bucket  = number of bounds[k] < scaled (k < 15; = the index of the first bound ≥ scaled,
 *                                           torch.bucketize with right=False; 0 for NaN)
 *   code    = order[bucket]
 *
 * and absmax[block] = m. Codes are packed two per byte, high nibble first, into packed[0 …
 * (count + 1) / 2): an odd count leaves the last byte's low nibble 0. `bounds` are the 15 midpoints
 * of the sorted code values and `order` the code index of each sorted position (Swift's
 * Bnb4bit.bucketizer); bounds must be non-decreasing and not NaN. blocksize ≥ 1. */
void lora_bnb4_quantize(const float *values, size_t count, size_t blocksize, const float bounds[15],
                        const uint8_t order[16], uint8_t *packed, float *absmax);

/* The same with an instruction set, `isa` as for lora_bnb4_decode_isa (LORA_ISA_AVX512 runs the
 * AVX2 code). All give the same bytes. Returns LORA_BNB4_UNSUPPORTED (nothing written) or 0. */
uint32_t lora_bnb4_quantize_isa(int isa, const float *values, size_t count, size_t blocksize, const float bounds[15],
                                const uint8_t order[16], uint8_t *packed, float *absmax);
/* absmax[b] = max |x| over block b of `count` fp32 values (blocks of `blocksize`, the last may be
 * shorter; NaN values ignored; +0 for an all-zero block): the absmax lora_bnb4_quantize computes,
 * without the codes. */
void lora_bnb4_block_absmax(const float *values, size_t count, size_t blocksize, float *absmax);

/* For the requantize report: with want = target − old and got = back − old per element (target
 * fp32; old and back in `format`, widened exactly; the differences and products in double),
 *   sums = { Σ want·got, Σ want², Σ got² }
 * each accumulated in four partial sums by element index mod 4 (the tail in the first) and added
 * as (s0 + s1) + (s2 + s3): one order, the same result on every CPU. No fused multiply-adds. */
void lora_delta_sums(const float *target, const void *old, const void *back, int format, size_t count, double sums[3]);
#endif
