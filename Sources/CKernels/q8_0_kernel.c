/* ggml Q8_0 block kernels: see include/q8_0_kernel.h for the contracts.
 *
 * Portable C runs one element at a time with the reference's operations. The AVX2 path does the
 * same operations eight lanes at a time: each block's absmax as a float max of magnitudes (all
 * values finite, so the order of the maxima does not matter); the scales of eight blocks at once
 * (lane b = block b: the same correctly rounded divisions, the half by VCVTPS2PH and its widening
 * by VCVTPH2PS, the rounding and widening of float_to_half / half_to_float without their
 * branches); the codes as one fp32 multiply, roundf built from truncation (t = trunc(v); t ± 1
 * when |v − t| ≥ ½, both exact), VCVTTPS2DQ (which gives INT32_MIN exactly where cvttss2si does)
 * and the low bytes. The report's double sums keep four lanes by
 * element index mod 4, one AVX register per sum, so every path adds the same numbers in the same
 * order. */
#include "q8_0_kernel.h"
#include "vectors.h"
#include <math.h>
#include <string.h>

/* One fp32 multiply per product; the report's products and sums rounded separately. */
#pragma STDC FP_CONTRACT OFF

enum { QK = 32, BLOCK_BYTES = 34 };

/* MARK: - Shared scalar pieces */

/* C's float-to-int32 conversion as x86-64's cvttss2si performs it (toward zero, INT32_MIN for NaN
   and out-of-range values, where C leaves it undefined). */
static inline int32_t truncated(float f) { return (f > -2147483904.0f && f < 2147483648.0f) ? (int32_t)f : INT32_MIN; }

/* The block's scale from its absmax: writes the half, returns the inverse scale used for the codes. */
static inline float scale_block(float amax, uint8_t *block) {
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t h = float_to_half(d);
    memcpy(block, &h, 2);
    return id;
}

static inline float block_scale(const uint8_t *block) {
    uint16_t h;
    memcpy(&h, block, 2);
    return half_to_float(h);
}

/* Index + 1 of the first non-finite of 32 values, 0 when all are finite. */
static inline size_t first_nonfinite(const float *x) {
    for (size_t j = 0; j < QK; j++)
        if (scalar_nonfinite(x[j])) return j + 1;
    return 0;
}

/* MARK: - Portable C */

static void decode_scalar(const uint8_t *in, size_t blocks, float *out) {
    for (size_t b = 0; b < blocks; b++, in += BLOCK_BYTES, out += QK) {
        float d = block_scale(in);
        for (size_t j = 0; j < QK; j++) out[j] = (float)(int8_t)in[2 + j] * d;
    }
}

static void encode_block_scalar(const float *x, uint8_t *y) {
    float amax = 0.0f;
    for (size_t j = 0; j < QK; j++) {
        float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    float id = scale_block(amax, y);
    for (size_t j = 0; j < QK; j++) y[2 + j] = (uint8_t)truncated(roundf(x[j] * id));
}

/* Adds one block's report terms to lanes d, w, q (element j to lane j mod 4). */
static void sums_block_scalar(const float *x, const uint8_t *y, const uint8_t *old, double *d, double *w, double *q) {
    float dn = block_scale(y), dold = block_scale(old);
    for (size_t j = 0; j < QK; j++) {
        double b = (double)((float)(int8_t)old[2 + j] * dold);
        double want = (double)x[j] - b, got = (double)((float)(int8_t)y[2 + j] * dn) - b;
        d[j & 3] += want * got;
        w[j & 3] += want * want;
        q[j & 3] += got * got;
    }
}

static size_t encode_scalar(const float *x, size_t blocks, uint8_t *y, const uint8_t *old, double *d, double *w, double *q,
                            size_t *changed) {
    for (size_t b = 0; b < blocks; b++, x += QK, y += BLOCK_BYTES) {
        size_t bad = first_nonfinite(x);
        if (bad) return b * QK + bad;
        encode_block_scalar(x, y);
        if (old) {
            sums_block_scalar(x, y, old, d, w, q);
            *changed += memcmp(y, old, BLOCK_BYTES) != 0;
            old += BLOCK_BYTES;
        }
    }
    return 0;
}

/* MARK: - AVX2 */

#if LORA_VECTOR_KERNELS
#include <immintrin.h>

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

AVX2_TARGET static inline __m256 codes_as_floats(const uint8_t *codes, float scale) {
    __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)codes));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(scale));
}

/* The scale of the block at `block`, widened by F16C (exact, as half_to_float). */
AVX2_TARGET static inline float block_scale_f16c(const uint8_t *block) {
    uint16_t h;
    memcpy(&h, block, 2);
    return _cvtsh_ss(h);
}

AVX2_TARGET static void decode_avx2(const uint8_t *in, size_t blocks, float *out) {
    for (size_t b = 0; b < blocks; b++, in += BLOCK_BYTES, out += QK) {
        float d = block_scale_f16c(in);
        for (size_t j = 0; j < QK; j += 8) _mm256_storeu_ps(out + j, codes_as_floats(in + 2 + j, d));
    }
}

/* roundf of eight lanes, then cvttss2si's conversion (both exact: see the file comment). */
AVX2_TARGET static inline __m256i rounded_codes(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f)));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

/* The eight partial maxima of |x| over a block's 32 values (their max is the block's amax: all
   finite, so the order of the maxima does not matter); *nonfinite gets lanes set for NaN and ±inf. */
AVX2_TARGET static inline __m256 block_maxima(const float *x, __m256i *nonfinite) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i exponent = _mm256_set1_epi32(0x7F800000);
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_loadu_ps(x + 8 * k);
        __m256i bits = _mm256_castps_si256(v);
        *nonfinite = _mm256_or_si256(*nonfinite, _mm256_cmpeq_epi32(_mm256_and_si256(bits, exponent), exponent));
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
    }
    return m;
}

/* The scales of eight blocks from their amax (lane b = block b), as the portable path computes
   them one at a time: d = amax / 127 and id = d ≠ 0 ? 1 / d : 0 (correctly rounded divisions, the
   same in every lane), the half of d by VCVTPS2PH (nearest even, overflowing to infinity, as
   float_to_half) and its widening by VCVTPH2PS (exact, as half_to_float). */
AVX2_TARGET static inline void scales(__m256 amax, float inverse[8], uint16_t halves[8], float stored[8]) {
    __m256 d = _mm256_div_ps(amax, _mm256_set1_ps(127.0f));
    __m256 nonzero = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_OQ);
    _mm256_storeu_ps(inverse, _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(1.0f), d)));
    __m128i h = _mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)halves, h);
    _mm256_storeu_ps(stored, _mm256_cvtph_ps(h));
}

/* The max of each of eight vectors, lane b of the result = the max of m[b]'s eight lanes. */
AVX2_TARGET static inline __m256 lane_maxima(const __m256 m[8]) {
    __m256 a = _mm256_max_ps(_mm256_permute2f128_ps(m[0], m[4], 0x20), _mm256_permute2f128_ps(m[0], m[4], 0x31));
    __m256 b = _mm256_max_ps(_mm256_permute2f128_ps(m[1], m[5], 0x20), _mm256_permute2f128_ps(m[1], m[5], 0x31));
    __m256 c = _mm256_max_ps(_mm256_permute2f128_ps(m[2], m[6], 0x20), _mm256_permute2f128_ps(m[2], m[6], 0x31));
    __m256 d = _mm256_max_ps(_mm256_permute2f128_ps(m[3], m[7], 0x20), _mm256_permute2f128_ps(m[3], m[7], 0x31));
    __m256 ab = _mm256_max_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    __m256 cd = _mm256_max_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    return _mm256_max_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
}

/* Writes a block's half scale and its 32 codes (the low bytes of rounded_codes of x · inverse, each
   product one fp32 multiply) and returns the codes. */
AVX2_TARGET static inline __m256i encode_codes(const float *x, float inverse, uint16_t half, uint8_t *y) {
    __m256 id = _mm256_set1_ps(inverse);
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = _mm256_and_si256(rounded_codes(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), id)), _mm256_set1_epi32(0xFF));
    /* The low bytes (0…255 after the mask, so the unsigned packs never saturate), back in order. */
    __m256i packed = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
    packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    memcpy(y, &half, 2);
    _mm256_storeu_si256((__m256i *)(y + 2), packed);
    return packed;
}

/* Eight codes (as eight signed bytes in the low half of `codes`) times `scale`, one fp32 multiply each. */
AVX2_TARGET static inline __m256 scaled(__m128i codes, __m256 scale) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes)), scale);
}

/* The report's terms of eight elements, lanes as the scalar path: elements 0–3 then 4–7 to lanes 0–3. */
AVX2_TARGET static inline void sums_eight(__m256 t, __m256 b, __m256 s, __m256d *d, __m256d *w, __m256d *q) {
    for (int half = 0; half < 2; half++) {
        __m128 t4 = half ? _mm256_extractf128_ps(t, 1) : _mm256_castps256_ps128(t);
        __m128 b4 = half ? _mm256_extractf128_ps(b, 1) : _mm256_castps256_ps128(b);
        __m128 s4 = half ? _mm256_extractf128_ps(s, 1) : _mm256_castps256_ps128(s);
        __m256d bd = _mm256_cvtps_pd(b4);
        __m256d want = _mm256_sub_pd(_mm256_cvtps_pd(t4), bd), got = _mm256_sub_pd(_mm256_cvtps_pd(s4), bd);
        *d = _mm256_add_pd(*d, _mm256_mul_pd(want, got));
        *w = _mm256_add_pd(*w, _mm256_mul_pd(want, want));
        *q = _mm256_add_pd(*q, _mm256_mul_pd(got, got));
    }
}

/* The accumulators of the report's three sums (lane l: elements l mod 4) and the changed blocks. */
typedef struct {
    __m256d d, w, q;
    size_t changed;
} comparison;

/* Adds a new block (values x, codes `codes`, stored scale `stored`, half `half`) compared with the
   old block at `old` to `c`. */
AVX2_TARGET static inline void compare_block(const float *x, __m256i codes, float stored, uint16_t half, const uint8_t *old,
                                             comparison *c) {
    uint16_t old_half;
    memcpy(&old_half, old, 2);
    __m256 scale_new = _mm256_set1_ps(stored), scale_old = _mm256_set1_ps(_cvtsh_ss(old_half));
    __m256i old_codes = _mm256_loadu_si256((const __m256i *)(old + 2));
    __m128i lo = _mm256_castsi256_si128(codes), hi = _mm256_extracti128_si256(codes, 1);
    __m128i olo = _mm256_castsi256_si128(old_codes), ohi = _mm256_extracti128_si256(old_codes, 1);
    __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    __m128i old_parts[4] = {olo, _mm_srli_si128(olo, 8), ohi, _mm_srli_si128(ohi, 8)};
    for (int k = 0; k < 4; k++)
        sums_eight(_mm256_loadu_ps(x + 8 * k), scaled(old_parts[k], scale_old), scaled(parts[k], scale_new), &c->d, &c->w, &c->q);
    __m256i same = _mm256_cmpeq_epi8(codes, old_codes);
    c->changed += (uint32_t)_mm256_movemask_epi8(same) != 0xFFFFFFFFu || half != old_half;
}

/* Encodes one block (and compares it when `old`); returns 0, or the index + 1 of its first
   non-finite value (nothing written). */
AVX2_TARGET static inline size_t encode_block_avx2(const float *x, uint8_t *y, const uint8_t *old, comparison *c) {
    __m256i nonfinite = _mm256_setzero_si256();
    __m256 m = block_maxima(x, &nonfinite);
    if (!_mm256_testz_si256(nonfinite, nonfinite)) return first_nonfinite(x);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    float inverse[8], stored[8];
    uint16_t halves[8];
    scales(_mm256_set1_ps(_mm_cvtss_f32(m4)), inverse, halves, stored);
    __m256i codes = encode_codes(x, inverse[0], halves[0], y);
    if (old) compare_block(x, codes, stored[0], halves[0], old, c);
    return 0;
}

/* Eight blocks at once: their scales by one vector division each (no division latency between a
   block's amax and its codes). Returns 0, or 1 when one of them has a NaN or infinity (nothing
   written: the caller encodes them one by one to find it). */
AVX2_TARGET static inline int encode_eight_avx2(const float *x, uint8_t *y, const uint8_t *old, comparison *c) {
    __m256i nonfinite = _mm256_setzero_si256();
    __m256 m[8];
    for (int b = 0; b < 8; b++) m[b] = block_maxima(x + QK * b, &nonfinite);
    if (!_mm256_testz_si256(nonfinite, nonfinite)) return 1;
    float inverse[8], stored[8];
    uint16_t halves[8];
    scales(lane_maxima(m), inverse, halves, stored);
    for (int b = 0; b < 8; b++) {
        __m256i codes = encode_codes(x + QK * b, inverse[b], halves[b], y + BLOCK_BYTES * b);
        if (old) compare_block(x + QK * b, codes, stored[b], halves[b], old + BLOCK_BYTES * b, c);
    }
    return 0;
}

AVX2_TARGET static size_t encode_avx2(const float *x, size_t blocks, uint8_t *y, const uint8_t *old, double *d, double *w,
                                      double *q, size_t *changed) {
    comparison c = {_mm256_loadu_pd(d), _mm256_loadu_pd(w), _mm256_loadu_pd(q), 0};
    size_t result = 0, b = 0;
    for (; b + 8 <= blocks; b += 8) {
        if (encode_eight_avx2(x + QK * b, y + BLOCK_BYTES * b, old ? old + BLOCK_BYTES * b : NULL, &c)) break;
    }
    for (; b < blocks; b++) {
        size_t bad = encode_block_avx2(x + QK * b, y + BLOCK_BYTES * b, old ? old + BLOCK_BYTES * b : NULL, &c);
        if (bad) {
            result = b * QK + bad;
            break;
        }
    }
    _mm256_storeu_pd(d, c.d);
    _mm256_storeu_pd(w, c.w);
    _mm256_storeu_pd(q, c.q);
    *changed += c.changed;
    return result;
}
#endif

/* MARK: - Entry points */

static int supported(int isa) { return isa == LORA_ISA_BEST || (isa >= LORA_ISA_SCALAR && isa <= lora_best_isa()); }

static int vector(int isa) {
#if LORA_VECTOR_KERNELS
    return (isa == LORA_ISA_BEST ? lora_best_isa() : isa) != LORA_ISA_SCALAR;
#else
    (void)isa;
    return 0;
#endif
}

uint32_t lora_q8_0_decode_isa(int isa, const uint8_t *in, size_t blocks, float *out) {
    if (!supported(isa)) return LORA_Q8_0_UNSUPPORTED;
#if LORA_VECTOR_KERNELS
    if (vector(isa)) {
        decode_avx2(in, blocks, out);
        return 0;
    }
#endif
    decode_scalar(in, blocks, out);
    return 0;
}

static size_t encode(int isa, const float *values, const uint8_t *old, size_t blocks, uint8_t *out, double sums[3],
                     size_t *changed, uint32_t *status) {
    *status = supported(isa) ? 0 : LORA_Q8_0_UNSUPPORTED;
    if (*status) return 0;
    double d[4] = {0, 0, 0, 0}, w[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
    size_t count = 0, bad;
#if LORA_VECTOR_KERNELS
    if (vector(isa)) bad = encode_avx2(values, blocks, out, old, d, w, q, &count);
    else
#endif
        bad = encode_scalar(values, blocks, out, old, d, w, q, &count);
    if (old) {
        sums[0] = (d[0] + d[1]) + (d[2] + d[3]);
        sums[1] = (w[0] + w[1]) + (w[2] + w[3]);
        sums[2] = (q[0] + q[1]) + (q[2] + q[3]);
        *changed = count;
    }
    return bad;
}

size_t lora_q8_0_encode_isa(int isa, const float *values, size_t blocks, uint8_t *out, uint32_t *status) {
    return encode(isa, values, NULL, blocks, out, NULL, NULL, status);
}

size_t lora_q8_0_requantize_isa(int isa, const float *values, const uint8_t *old, size_t blocks, uint8_t *out,
                                double sums[3], size_t *changed, uint32_t *status) {
    return encode(isa, values, old, blocks, out, sums, changed, status);
}
