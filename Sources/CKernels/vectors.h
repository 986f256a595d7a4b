/* Private to CKernels: the exact widening / rounding of stored elements, one at a time (portable C,
 * the scalar paths) and 16-lane generic vectors (the AVX2 / AVX-512 paths), shared by the merge and
 * probe kernels. Both round alike: nearest even, NaN kept quiet with its top payload bits, F16 and
 * BF16 subnormals kept. The vector code is always inlined into functions compiled for AVX2 or
 * AVX-512, so no vector crosses a call boundary. */
#ifndef LORA_TOOL_VECTORS_H
#define LORA_TOOL_VECTORS_H
#include "kernels_isa.h"
#include "merge_kernel.h"
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Every product and sum below is rounded as written: no contraction into fused multiply-adds. */
#pragma STDC FP_CONTRACT OFF

/* x86-64 builds with clang have the vector paths; every other build has the scalar path only. */
#if defined(__x86_64__) && defined(__clang__)
#define LORA_VECTOR_KERNELS 1
#else
#define LORA_VECTOR_KERNELS 0
#endif

static inline size_t scalar_format_size(int format) { return format == LORA_F32 ? 4 : 2; }

static inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 1 when f is NaN or ±inf. */
static inline uint32_t scalar_nonfinite(float f) { return (float_bits(f) & 0x7F800000u) == 0x7F800000u; }

/* IEEE half → float, exact (integer arithmetic only: no F16C, no compiler runtime). */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1F) return bits_float(sign | 0x7F800000u | (man << 13) | (man ? 0x400000u : 0));
    if (exp == 0) {
        float v = (float)man * 0x1p-24f; /* exact: man < 2^10 */
        return bits_float(float_bits(v) | sign);
    }
    return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

/* float → IEEE half, nearest even, as VCVTPS2PH does it (NaN: quiet, top payload bits kept). */
static inline uint16_t float_to_half(float f) {
    uint32_t x = float_bits(f), ax = x & 0x7FFFFFFFu;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (ax > 0x7F800000u) return sign | 0x7E00u | (uint16_t)((ax >> 13) & 0x3FFu);
    if (ax >= 0x477FF000u) return sign | 0x7C00u; /* ≥ 65520 rounds to inf */
    if (ax >= 0x38800000u) {                     /* ≥ 2^-14: a normal half */
        uint32_t r = ax - 0x38000000u;
        r += 0xFFFu + ((r >> 13) & 1u);
        return sign | (uint16_t)(r >> 13);
    }
    if (ax <= 0x33000000u) return sign; /* ≤ 2^-25 rounds to zero (2^-25 ties to even 0) */
    uint32_t e = ax >> 23, m = (ax & 0x7FFFFFu) | 0x800000u, shift = 126 - e;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

/* One element of `format` at p, widened exactly. */
static inline float scalar_load(const unsigned char *p, int format) {
    if (format == LORA_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return format == LORA_BF16 ? bits_float((uint32_t)h << 16) : half_to_float(h);
}

/* Rounds y to `format` and stores it at p (the same rounding as store_values). */
static inline void scalar_store(unsigned char *p, int format, float y) {
    if (format == LORA_F32) {
        memcpy(p, &y, 4);
        return;
    }
    uint16_t h;
    if (format == LORA_BF16) {
        uint32_t u = float_bits(y);
        h = (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    } else {
        h = float_to_half(y);
    }
    memcpy(p, &h, 2);
}

/* max |x[i]| over n floats, from `start`, as the reference's `m = max(m, abs(x))`: NaN never wins. */
static inline float scalar_absmax(const float *x, size_t n, float start) {
    float m = start;
    for (size_t i = 0; i < n; i++) {
        float a = bits_float(float_bits(x[i]) & 0x7FFFFFFFu);
        m = (a >= m) ? a : m;
    }
    return m;
}

#if LORA_VECTOR_KERNELS
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

/* Adding 2^23 to the exponent field carries into the sign bit exactly when it is all ones. */
INLINE v16u nonfinite_bits(v16f v) { return (((v16u)v) & 0x7F800000) + 0x00800000; }

/* The LORA_* flags (merge_kernel.h) of a call from its lanes' nonfinite_bits. */
INLINE uint32_t lane_flags(v16u yflags, v16u wflags) {
    uint32_t y = 0, w = 0;
    for (int l = 0; l < 16; l++) {
        y |= yflags[l];
        w |= wflags[l];
    }
    return ((y & 0x80000000u) ? LORA_RESULT_NONFINITE : 0) | ((w & 0x80000000u) ? LORA_INPUT_NONFINITE : 0);
}

/* A (rank rows of cols floats, rows lda apart) packed tile by tile into dst: rank × 16 contiguous
   floats per 16 columns, zeros past the end. At power-of-two strides A's rows would all fall in the
   same L1 set and evict each other; packed, a tile is one sequential read per group of rows. */
INLINE void pack_tiles(const float *a, size_t rank, size_t lda, size_t cols, float *dst) {
    for (size_t j = 0; j < cols; j += 16) {
        size_t n = cols - j < 16 ? cols - j : 16;
        float *d = dst + j * rank;
        for (size_t k = 0; k < rank; k++) {
            memcpy(d + 16 * k, a + k * lda + j, n * 4);
            if (n < 16) memset(d + 16 * k + n, 0, (16 - n) * 4);
        }
    }
}

/* The end of a merge kernel's tile: 16 (or n) elements of w at w_at widened, y = w + delta (one
   rounding), both checked for NaN/inf into the flags, y rounded to out_format and stored at out_at. */
INLINE void add_and_store(const unsigned char *w_at, int in_format, unsigned char *out_at, int out_format, v16f delta, size_t n, int full,
                          v16u *yflags, v16u *wflags) {
    v16f w = load_values(w_at, in_format, n, full);
    v16f y = w + delta;
    *wflags |= nonfinite_bits(w);
    *yflags |= nonfinite_bits(y);
    store_values(out_at, out_format, y, n, full);
}

#endif

/* The scalar paths' counterpart: y = w + delta for one element, flags set, y stored. */
static inline void scalar_add_and_store(const unsigned char *w_at, int in_format, unsigned char *out_at, int out_format, float delta,
                                        uint32_t *yflags, uint32_t *wflags) {
    float w = scalar_load(w_at, in_format);
    float y = w + delta;
    *wflags |= scalar_nonfinite(w);
    *yflags |= scalar_nonfinite(y);
    scalar_store(out_at, out_format, y);
}
#endif
