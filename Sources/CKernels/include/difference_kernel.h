#ifndef LORA_TOOL_DIFFERENCE_KERNEL_H
#define LORA_TOOL_DIFFERENCE_KERNEL_H
#include "kernels_isa.h"
#include <stddef.h>
#include <stdint.h>

/* ΔW for extract: delta[i] = (float)tuned[i] − (float)base[i] (one fp32 rounding), for i < count,
 * from stored elements in their formats (any alignment), and the sums Σ delta[i]² and Σ base[i]² in
 * fp64 (sixteen-lane partial sums added in a fixed order), added to *delta_sq and *base_sq.
 * `isa` as for lora_merge_rows; returns 4 (nothing computed) when it cannot run, else 0. */
uint32_t lora_difference(int isa, const void *tuned, int tuned_format, const void *base, int base_format, size_t count,
                         float *delta, double *delta_sq, double *base_sq);
#endif
