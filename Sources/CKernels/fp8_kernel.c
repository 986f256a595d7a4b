/* Block-scaled FP8 E4M3 kernels: see include/fp8_kernel.h for the contracts.
 *
 * A range of elements is walked run by run, a run being the rest of a row inside one block
 * column (at most block_cols elements, one scale). Within a run every path does the same
 * per-element arithmetic: one fp32 multiply by the block's scale, integer bit manipulation for
 * the E4M3 encode / decode, and the rounding of vectors.h to the output format. The subnormal
 * encode rounds |t| * 2^9 (exact) to an integer by adding 2^23 (one fp32 add in the default
 * round-to-nearest-even mode, exactly Swift's rounded(.toNearestOrEven) for values below 2^22),
 * and the normal encode rounds the mantissa with integer adds, so every path gives the same
 * bytes. The vector paths are generic 16-lane vectors compiled for AVX2 and for AVX-512. */
#include "fp8_kernel.h"
#include "vectors.h"
#include <math.h>
#include <string.h>

/* One multiply, one add, never fused. */
#pragma STDC FP_CONTRACT OFF

#define FP8_MAX 448.0f
/* The positive quiet NaN Swift's Float.nan is, which FP8E4M3.decode returns for 0x7F / 0xFF. */
#define FP8_NAN_BITS 0x7FC00000u

/* MARK: - Runs */

/* Calls body(offset, n, block) for each run of [first, first + count), offset = run start - first.
   Divisions only once per range: the row, column and block advance by counting. */
#define FOR_EACH_RUN(first, count, cols, block_rows, block_cols, body)                                              \
    do {                                                                                                            \
        size_t grid_cols_ = ((cols) + (block_cols) - 1) / (block_cols), k_ = (first), end_ = (first) + (count);     \
        size_t row_ = k_ / (cols), j_ = k_ % (cols), bc_ = j_ / (block_cols), br_ = row_ / (block_rows);               \
        size_t in_rows_ = row_ % (block_rows), bend_ = (bc_ + 1) * (block_cols) < (cols) ? (bc_ + 1) * (block_cols) : (cols); \
        while (k_ < end_) {                                                                                         \
            size_t n_ = bend_ - j_ < end_ - k_ ? bend_ - j_ : end_ - k_;                                            \
            body(k_ - (first), n_, br_ * grid_cols_ + bc_);                                                         \
            k_ += n_;                                                                                               \
            j_ += n_;                                                                                               \
            if (j_ == bend_) {                                                                                      \
                if (j_ == (cols)) {                                                                                 \
                    j_ = 0;                                                                                         \
                    bc_ = 0;                                                                                        \
                    if (++in_rows_ == (block_rows)) { in_rows_ = 0; br_++; }                                        \
                } else {                                                                                            \
                    bc_++;                                                                                          \
                }                                                                                                   \
                bend_ = (bc_ + 1) * (block_cols) < (cols) ? (bc_ + 1) * (block_cols) : (cols);                      \
            }                                                                                                       \
        }                                                                                                           \
    } while (0)

/* MARK: - Portable C */

static inline uint8_t encode_scalar(float x) {
    uint32_t bits = float_bits(x), mag = bits & 0x7FFFFFFFu;
    uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
    if (mag >= 0x43F00000u) return sign | 0x7Fu; /* NaN, and >= 480: beyond the format */
    if (mag < 0x3C800000u) {                     /* below 2^-6: subnormal steps of 2^-9 */
        float rounded = bits_float(mag) * 512.0f + 0x1p23f;
        return sign | (uint8_t)(float_bits(rounded) - 0x4B000000u); /* 8 is the smallest normal */
    }
    uint32_t odd = (mag >> 20) & 1u;
    return sign | (uint8_t)(((mag + 0x7FFFFu + odd) >> 20) - (120u << 3));
}

static inline float decode_scalar(uint8_t code) {
    uint32_t sign = (uint32_t)(code & 0x80u) << 24, e = (code >> 3) & 0xFu, m = code & 7u;
    if (e == 0) return bits_float(sign | float_bits((float)m * 0x1p-9f));
    if (e == 15 && m == 7) return bits_float(FP8_NAN_BITS);
    return bits_float(sign | (e + 120) << 23 | m << 20);
}

/* The quantizer's clamp as Swift's min(max(t, -448), 448): NaN passes through. */
static inline float clamp_scalar(float t) {
    t = (-FP8_MAX >= t) ? -FP8_MAX : t;
    return (FP8_MAX < t) ? FP8_MAX : t;
}

static void absmax_run_scalar(const float *x, size_t n, float *amax) { *amax = scalar_absmax(x, n, *amax); }

static void quantize_run_scalar(const float *x, size_t n, float forward, float stored, uint8_t *codes, int format,
                                unsigned char *back) {
    size_t size = scalar_format_size(format);
    for (size_t i = 0; i < n; i++) {
        float t = x[i] * forward;
        uint8_t c = encode_scalar(clamp_scalar(t));
        codes[i] = c;
        scalar_store(back + i * size, format, decode_scalar(c) * stored);
    }
}

static void decode_run_scalar(const uint8_t *codes, size_t n, float scale, int format, unsigned char *out) {
    size_t size = scalar_format_size(format);
    for (size_t i = 0; i < n; i++) scalar_store(out + i * size, format, decode_scalar(codes[i]) * scale);
}

/* MARK: - Vector paths */

typedef uint8_t v16b __attribute__((vector_size(16)));

#if LORA_VECTOR_KERNELS

INLINE v16u select_u(v16u mask, v16u a, v16u b) { return (mask & a) | (~mask & b); }

/* encode_scalar on 16 lanes. */
INLINE v16u encode_v(v16f x) {
    v16u bits = (v16u)x, mag = bits & 0x7FFFFFFFu, sign = (bits >> 24) & 0x80u;
    v16f rounded = (v16f)mag * 512.0f + 0x1p23f;
    v16u subnormal = (v16u)rounded - 0x4B000000u;
    v16u normal = ((mag + 0x7FFFFu + ((mag >> 20) & 1u)) >> 20) - (120u << 3);
    v16u code = select_u((v16u)(mag < 0x3C800000u), subnormal, normal);
    return sign | select_u((v16u)(mag >= 0x43F00000u), (v16u)(mag & 0) + 0x7Fu, code & 0x7Fu);
}

/* decode_scalar on 16 lanes. */
INLINE v16f decode_v(v16u code) {
    v16u sign = (code & 0x80u) << 24, e = (code >> 3) & 0xFu, m = code & 7u;
    v16u subnormal = sign | (v16u)(__builtin_convertvector(m, v16f) * 0x1p-9f);
    v16u normal = sign | (e + 120u) << 23 | m << 20;
    v16u value = select_u((v16u)(e == 0u), subnormal, normal);
    return (v16f)select_u((v16u)((code & 0x7Fu) == 0x7Fu), (v16u)(e & 0) + FP8_NAN_BITS, value);
}

INLINE v16f clamp_v(v16f t) {
    v16f lo = splat(-FP8_MAX), hi = splat(FP8_MAX);
    t = (v16f)select_u((v16u)(lo >= t), (v16u)lo, (v16u)t);
    return (v16f)select_u((v16u)(hi < t), (v16u)hi, (v16u)t);
}

/* 16 (or n < 16, zeros after) codes widened to lanes; fixed-size copies for whole vectors. */
INLINE v16u load_codes(const uint8_t *p, size_t n) {
    v16b b = {0};
    if (n == 16) memcpy(&b, p, 16);
    else memcpy(&b, p, n);
    return __builtin_convertvector(b, v16u);
}

INLINE void store_codes(uint8_t *p, v16u code, size_t n) {
    v16b b = __builtin_convertvector(code, v16b);
    if (n == 16) memcpy(p, &b, 16);
    else memcpy(p, &b, n);
}

INLINE v16f load_floats(const float *p, size_t n) {
    v16f v = {0};
    if (n == 16) memcpy(&v, p, 64);
    else memcpy(&v, p, n * 4);
    return v;
}

/* max over the magnitude bits with NaN lanes zeroed: for non-negative non-NaN floats the bit
   order is the value order, so it is the scalar max (NaN never wins). */
INLINE void absmax_run_v(const float *x, size_t n, float *amax) {
    v16u m = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v16u a;
        memcpy(&a, x + i, 64);
        a &= 0x7FFFFFFFu;
        a = select_u((v16u)(a > 0x7F800000u), a & 0, a);
        m = select_u((v16u)(a > m), a, m);
    }
    uint32_t best = 0;
    for (int l = 0; l < 16; l++) best = m[l] > best ? m[l] : best;
    float found = bits_float(best);
    found = scalar_absmax(x + i, n - i, found);
    *amax = (found >= *amax) ? found : *amax;
}

INLINE void quantize_run_v(const float *x, size_t n, float forward, float stored, uint8_t *codes, int format, unsigned char *back) {
    size_t size = format_size(format);
    for (size_t i = 0; i < n; i += 16) {
        size_t m = n - i < 16 ? n - i : 16;
        v16u c = encode_v(clamp_v(load_floats(x + i, m) * forward));
        store_codes(codes + i, c, m);
        store_values(back + i * size, format, decode_v(c) * stored, m, m == 16);
    }
}

INLINE void decode_run_v(const uint8_t *codes, size_t n, float scale, int format, unsigned char *out) {
    size_t size = format_size(format);
    for (size_t i = 0; i < n; i += 16) {
        size_t m = n - i < 16 ? n - i : 16;
        store_values(out + i * size, format, decode_v(load_codes(codes + i, m)) * scale, m, m == 16);
    }
}

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

/* Each kernel's range loop compiled once per vector instruction set. */
#define VECTOR_KERNELS(suffix, target)                                                                                  \
    target static void absmax_##suffix(const float *values, size_t first, size_t count, size_t cols, size_t block_rows,  \
                                       size_t block_cols, float *amax) {                                                 \
        FOR_EACH_RUN(first, count, cols, block_rows, block_cols, ABSMAX_RUN_V);                                          \
    }                                                                                                                    \
    target static void quantize_##suffix(const float *values, size_t first, size_t count, size_t cols, size_t block_rows, \
                                         size_t block_cols, const float *forward, const float *stored, uint8_t *codes,    \
                                         int format, unsigned char *back) {                                              \
        FOR_EACH_RUN(first, count, cols, block_rows, block_cols, QUANTIZE_RUN_V);                                        \
    }                                                                                                                    \
    target static void decode_##suffix(const uint8_t *codes, size_t first, size_t count, size_t cols, size_t block_rows,  \
                                       size_t block_cols, const float *scales, int format, unsigned char *out) {          \
        FOR_EACH_RUN(first, count, cols, block_rows, block_cols, DECODE_RUN_V);                                          \
    }

#define ABSMAX_RUN_V(o, n, b) absmax_run_v(values + (o), (n), amax + (b))
#define QUANTIZE_RUN_V(o, n, b) \
    quantize_run_v(values + (o), (n), forward[b], stored[b], codes + (o), format, back + (o) * format_size(format))
#define DECODE_RUN_V(o, n, b) decode_run_v(codes + (o), (n), scales[b], format, out + (o) * format_size(format))

VECTOR_KERNELS(avx512, AVX512_TARGET)
VECTOR_KERNELS(avx2, AVX2_TARGET)
#endif

/* MARK: - Entry points */

/* The instruction set to run, or -1 when this CPU lacks it. */
static int chosen(int isa) {
    int best = lora_best_isa();
    if (isa == LORA_ISA_BEST) return best;
    return isa < LORA_ISA_SCALAR || isa > best ? -1 : isa;
}

uint32_t lora_fp8_block_absmax_isa(int isa, const float *values, size_t first, size_t count, size_t cols, size_t block_rows,
                                   size_t block_cols, float *amax) {
    isa = chosen(isa);
    if (isa < 0) return LORA_FP8_UNSUPPORTED;
#if LORA_VECTOR_KERNELS
    if (isa == LORA_ISA_AVX512) { absmax_avx512(values, first, count, cols, block_rows, block_cols, amax); return 0; }
    if (isa == LORA_ISA_AVX2) { absmax_avx2(values, first, count, cols, block_rows, block_cols, amax); return 0; }
#endif
#define ABSMAX_RUN_S(o, n, b) absmax_run_scalar(values + (o), (n), amax + (b))
    FOR_EACH_RUN(first, count, cols, block_rows, block_cols, ABSMAX_RUN_S);
    return 0;
}

uint32_t lora_fp8_block_quantize_isa(int isa, const float *values, size_t first, size_t count, size_t cols, size_t block_rows,
                                     size_t block_cols, const float *forward, const float *stored, uint8_t *codes,
                                     int back_format, void *back_out) {
    unsigned char *back = back_out;
    int format = back_format;
    isa = chosen(isa);
    if (isa < 0) return LORA_FP8_UNSUPPORTED;
#if LORA_VECTOR_KERNELS
    if (isa == LORA_ISA_AVX512) { quantize_avx512(values, first, count, cols, block_rows, block_cols, forward, stored, codes, format, back); return 0; }
    if (isa == LORA_ISA_AVX2) { quantize_avx2(values, first, count, cols, block_rows, block_cols, forward, stored, codes, format, back); return 0; }
#endif
#define QUANTIZE_RUN_S(o, n, b) \
    quantize_run_scalar(values + (o), (n), forward[b], stored[b], codes + (o), format, back + (o) * scalar_format_size(format))
    FOR_EACH_RUN(first, count, cols, block_rows, block_cols, QUANTIZE_RUN_S);
    return 0;
}

uint32_t lora_fp8_block_decode_isa(int isa, const uint8_t *codes, size_t first, size_t count, size_t cols, size_t block_rows,
                                   size_t block_cols, const float *scales, int out_format, void *out_bytes) {
    unsigned char *out = out_bytes;
    int format = out_format;
    isa = chosen(isa);
    if (isa < 0) return LORA_FP8_UNSUPPORTED;
#if LORA_VECTOR_KERNELS
    if (isa == LORA_ISA_AVX512) { decode_avx512(codes, first, count, cols, block_rows, block_cols, scales, format, out); return 0; }
    if (isa == LORA_ISA_AVX2) { decode_avx2(codes, first, count, cols, block_rows, block_cols, scales, format, out); return 0; }
#endif
#define DECODE_RUN_S(o, n, b) decode_run_scalar(codes + (o), (n), scales[b], format, out + (o) * scalar_format_size(format))
    FOR_EACH_RUN(first, count, cols, block_rows, block_cols, DECODE_RUN_S);
    return 0;
}

size_t lora_bytes_differing(const uint8_t *a, const uint8_t *b, size_t count) {
    /* 16 bytes at a time (a generic vector: SSE2 on any x86-64), each lane counting up to 255. */
    size_t n = 0, i = 0;
    while (count - i >= 16) {
        size_t stop = count - i >= 16 * 255 ? i + 16 * 255 : i + (count - i) / 16 * 16;
        v16b lanes = {0};
        for (; i < stop; i += 16) {
            v16b x, y;
            memcpy(&x, a + i, 16);
            memcpy(&y, b + i, 16);
            lanes -= (v16b)(x != y);
        }
        for (int l = 0; l < 16; l++) n += lanes[l];
    }
    for (; i < count; i++) n += a[i] != b[i];
    return n;
}
