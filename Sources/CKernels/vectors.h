/* Private to CKernels: 16-lane generic vectors and the exact widening / rounding of stored
 * elements, shared by the merge and probe kernels. Everything here is always inlined into
 * functions compiled for AVX2 or AVX-512, so no vector crosses a call boundary. */
#ifndef LORA_TOOL_VECTORS_H
#define LORA_TOOL_VECTORS_H
#include "kernels_isa.h"
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"

typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16s __attribute__((vector_size(32)));
typedef _Float16 v16h __attribute__((vector_size(32)));

#define INLINE static inline __attribute__((always_inline))

INLINE size_t format_size(int format) { return format == LORA_F32 ? 4 : 2; }

INLINE v16f splat(float x) {
    v16f v;
    for (int l = 0; l < 16; l++) v[l] = x;
    return v;
}

/* 16 (or, with `full` 0, n < 16 then zeros) elements of `format` at p, widened exactly. */
INLINE v16f load_values(const unsigned char *p, int format, size_t n, int full) {
    unsigned char padded[64];
    if (!full) {
        memset(padded, 0, sizeof padded);
        memcpy(padded, p, n * format_size(format));
        p = padded;
    }
    if (format == LORA_F32) {
        v16f v;
        memcpy(&v, p, 64);
        return v;
    }
    if (format == LORA_BF16) {
        v16s h;
        memcpy(&h, p, 32);
        return (v16f)(__builtin_convertvector(h, v16u) << 16);
    }
    v16h h;
    memcpy(&h, p, 32);
    return __builtin_convertvector(h, v16f);
}

/* Rounds y to `format` (nearest even; NaN stays a quiet NaN) and stores 16 (or n) elements at p. */
INLINE void store_values(unsigned char *p, int format, v16f y, size_t n, int full) {
    unsigned char staged[64];
    unsigned char *q = full ? p : staged;
    if (format == LORA_F32) {
        memcpy(q, &y, 64);
    } else if (format == LORA_BF16) {
        v16u u = (v16u)y;
        v16u rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
        v16u nan = (v16u)((u & 0x7FFFFFFF) > 0x7F800000);
        v16u bits = (nan & ((u >> 16) | 0x40)) | (~nan & rounded);
        v16s h = __builtin_convertvector(bits, v16s);
        memcpy(q, &h, 32);
    } else {
        v16h h = __builtin_convertvector(y, v16h);
        memcpy(q, &h, 32);
    }
    if (!full) memcpy(p, staged, n * format_size(format));
}

#endif
#endif
