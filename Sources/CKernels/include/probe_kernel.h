#ifndef LORA_TOOL_PROBE_KERNEL_H
#define LORA_TOOL_PROBE_KERNEL_H
#include "kernels_isa.h"
#include <stddef.h>
#include <stdint.h>

/* Verify's probe products over a block of stored rows ((out, in) layout), eight probes at once:
 *
 *   difference[o*8 + p] = Σ_i ((double)merged[o][i] − (double)base[o][i]) · x[p*cols + i]
 *   product[o*8 + p]    = Σ_i (double)base[o][i] · x[p*cols + i]
 *   norm2[o]            = Σ_i (double)base[o][i]²
 *
 * for o < rows, p < 8. base and merged are rows×cols in their formats (row-major, any alignment);
 * x is probe-major (8 × cols doubles). All in fp64: the stored values widen exactly, so each
 * difference is exact unless the two values are more than 2^29 apart in magnitude. Sums run in
 * eight-lane partial sums added in a fixed order, so results are identical on both instruction sets.
 * `isa` as for lora_merge_rows; returns LORA_PROBE_UNSUPPORTED (nothing computed) or 0. */
enum { LORA_PROBE_UNSUPPORTED = 4 };
uint32_t lora_probe_rows(int isa, const void *base, int base_format, const void *merged, int merged_format, size_t rows,
                         size_t cols, const double *x, double *difference, double *product, double *norm2);
#endif
