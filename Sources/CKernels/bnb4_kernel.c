/* bitsandbytes 4-bit block kernels: see include/bnb4_kernel.h for the contracts.
 *
 * Decode: within a block every element is quant_map[code] * absmax[block], so the 16 possible
 * products are computed once per block (the same fp32 multiply, so the same bits as per element),
 * rounded to the output format (scalar_store / store_values, the rounding of every kernel), and
 * each element becomes a table lookup: two per packed byte in portable C; on AVX2, 64 per 32 packed
 * bytes (16-bit outputs: PSHUFB into a table of the outputs' low bytes and one of their high bytes;
 * fp32 outputs: two 8-float VPERMPS and a blend on code bit 3).
 *
 * Quantize: per block an absmax pass (on AVX2 an integer max of the magnitude bits with NaN lanes
 * zeroed: for non-negative non-NaN floats the bit order is the value order, so it equals the
 * reference's float max) and a coding pass: scale, clamp, find the count of bounds below the value
 * by a branchless four-step binary search (the bounds are sorted), look the bucket up in `order`
 * (PSHUFB on AVX2), and pack nibble pairs (PMADDUBSW by 16 and 1). Everything after the fp32
 * scaling is comparisons and integers, so every path gives the same bytes. */
#include "bnb4_kernel.h"
#include "vectors.h"
#include <math.h>
#include <string.h>

/* The reference rounds the product and the sum separately (absmax resolution) and scales with one
   multiply: no contraction into fused multiply-adds, in any path. */
#pragma STDC FP_CONTRACT OFF

/* The reference's lower limit of a block's absmax before taking its inverse (1e-38 as Float). */
#define BNB4_TINY 1e-38f

/* MARK: - Decode, portable C */

/* Elements [i, end) all in one block with the 16 rounded outputs `lut` (out_size bytes each). */
static void decode_span_scalar(const uint8_t *packed, size_t i, size_t end, const unsigned char *lut, size_t out_size,
                               unsigned char *o) {
    if (i & 1) {
        memcpy(o, lut + (packed[i >> 1] & 15u) * out_size, out_size);
        o += out_size;
        i++;
    }
    if (out_size == 2) {
        for (; i + 2 <= end; i += 2, o += 4) {
            uint8_t byte = packed[i >> 1];
            memcpy(o, lut + (byte >> 4) * 2, 2);
            memcpy(o + 2, lut + (byte & 15u) * 2, 2);
        }
    } else {
        for (; i + 2 <= end; i += 2, o += 8) {
            uint8_t byte = packed[i >> 1];
            memcpy(o, lut + (byte >> 4) * 4, 4);
            memcpy(o + 4, lut + (byte & 15u) * 4, 4);
        }
    }
    if (i < end) memcpy(o, lut + (packed[i >> 1] >> 4) * out_size, out_size);
}

/* The block's 16 outputs, rounded to the output format, out_size bytes each. */
static inline void scalar_table(const float *quant_map, float scale, int out_format, size_t out_size, unsigned char *lut) {
    for (int k = 0; k < 16; k++) {
        float v = quant_map[k] * scale;
        scalar_store(lut + k * out_size, out_format, v);
    }
}

static void decode_scalar(const uint8_t *packed, size_t first, size_t count, const float *absmax, size_t blocksize,
                          const float *quant_map, int out_format, unsigned char *out) {
    size_t out_size = scalar_format_size(out_format), i = first, end = first + count;
    unsigned char lut[16 * 4];
    while (i < end) {
        size_t block = i / blocksize, block_end = (block + 1) * blocksize;
        if (block_end > end || block_end < i) block_end = end;
        scalar_table(quant_map, absmax[block], out_format, out_size, lut);
        decode_span_scalar(packed, i, block_end, lut, out_size, out + (i - first) * out_size);
        i = block_end;
    }
}

/* MARK: - Quantize, portable C */

/* One element's code: scale, clamp as the reference's Swift min/max (NaN passes through), count. */
static inline uint8_t code_of(float x, float inv, const float *bounds, const uint8_t *order) {
    float t = x * inv;
    t = (-1.0f >= t) ? -1.0f : t;
    t = (1.0f < t) ? 1.0f : t;
    /* The count of bounds below t: for non-decreasing bounds a four-step binary search. */
    unsigned c = (bounds[7] < t) ? 8u : 0u;
    c += (bounds[c + 3] < t) ? 4u : 0u;
    c += (bounds[c + 1] < t) ? 2u : 0u;
    c += (bounds[c] < t) ? 1u : 0u;
    return order[c];
}

/* Writes element i's code: an even i starts its byte (low nibble 0), an odd i completes it. */
static inline void put_code(uint8_t *packed, size_t i, uint8_t code) {
    if (i & 1) packed[i >> 1] |= code;
    else packed[i >> 1] = (uint8_t)(code << 4);
}

/* max |x| over n values as the reference's `m = max(m, abs(x))` from +0: NaN never wins. */
static inline float absmax_scalar(const float *x, size_t n) { return scalar_absmax(x, n, 0.0f); }

static inline float inverse_of(float m) {
    float limited = (BNB4_TINY >= m) ? BNB4_TINY : m;
    return 1.0f / limited;
}

static void quantize_scalar(const float *values, size_t count, size_t blocksize, const float *bounds, const uint8_t *order,
                            uint8_t *packed, float *absmax) {
    for (size_t start = 0, block = 0; start < count; start += blocksize, block++) {
        size_t n = count - start < blocksize ? count - start : blocksize;
        float m = absmax_scalar(values + start, n);
        absmax[block] = m;
        float inv = inverse_of(m);
        for (size_t i = start; i < start + n; i++) put_code(packed, i, code_of(values[i], inv, bounds, order));
    }
}

/* MARK: - AVX2 paths */

#if LORA_VECTOR_KERNELS
#include <immintrin.h>

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

/* Decode: the block's 16 outputs as lookup tables. 16-bit outputs: byte tables `lo` and `hi`;
   fp32: floats 0–7 in `lo`, 8–15 in `hi`. The products and the rounding are those of the scalar
   path (one fp32 multiply per code; store_values rounds as scalar_store). */
AVX2_TARGET static void decode_tables(const float *quant_map, float scale, int out_format, __m256i *lo, __m256i *hi) {
    v16f q;
    memcpy(&q, quant_map, 64);
    v16f products = q * scale;
    if (out_format == LORA_F32) {
        float f[16];
        memcpy(f, &products, 64);
        *lo = _mm256_castps_si256(_mm256_loadu_ps(f));
        *hi = _mm256_castps_si256(_mm256_loadu_ps(f + 8));
        return;
    }
    unsigned char words[32];
    store_values(words, out_format, products, 16, 1);
    __m128i w0 = _mm_loadu_si128((const __m128i *)words), w1 = _mm_loadu_si128((const __m128i *)(words + 16));
    /* Split the 16 words into their low bytes and high bytes (16 each). */
    const __m128i even = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i odd = _mm_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    __m128i l = _mm_unpacklo_epi64(_mm_shuffle_epi8(w0, even), _mm_shuffle_epi8(w1, even));
    __m128i h = _mm_unpacklo_epi64(_mm_shuffle_epi8(w0, odd), _mm_shuffle_epi8(w1, odd));
    *lo = _mm256_broadcastsi128_si256(l);
    *hi = _mm256_broadcastsi128_si256(h);
}

/* 64 elements from 32 packed bytes (the first element even). */
AVX2_TARGET static inline void decode64(const uint8_t *p, __m256i lo, __m256i hi, int out_format, unsigned char *o) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble), low = _mm256_and_si256(v, nibble);
    /* Codes in element order: per 128-bit lane, bytes 0–7 then 8–15 of that lane interleaved. */
    __m256i c0 = _mm256_unpacklo_epi8(high, low), c1 = _mm256_unpackhi_epi8(high, low);
    /* c0 lane 0: elements 0–15, c1 lane 0: 16–31, c0 lane 1: 32–47, c1 lane 1: 48–63. */
    __m256i a = _mm256_permute2x128_si256(c0, c1, 0x20), b = _mm256_permute2x128_si256(c0, c1, 0x31);
    if (out_format == LORA_F32) {
        uint8_t codes[64];
        _mm256_storeu_si256((__m256i *)codes, a);
        _mm256_storeu_si256((__m256i *)(codes + 32), b);
        for (int g = 0; g < 8; g++) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + 8 * g)));
            __m256 from_lo = _mm256_permutevar8x32_ps(_mm256_castsi256_ps(lo), idx);
            __m256 from_hi = _mm256_permutevar8x32_ps(_mm256_castsi256_ps(hi), idx);
            __m256 pick = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)); /* sign bit = code bit 3 */
            _mm256_storeu_ps((float *)(o + 32 * g), _mm256_blendv_ps(from_lo, from_hi, pick));
        }
        return;
    }
    __m256i parts[2] = {a, b};
    for (int h = 0; h < 2; h++) {
        __m256i l = _mm256_shuffle_epi8(lo, parts[h]), u = _mm256_shuffle_epi8(hi, parts[h]);
        /* Per lane: words of codes 0–7 and 8–15 of that lane's 16 elements. */
        __m256i w0 = _mm256_unpacklo_epi8(l, u), w1 = _mm256_unpackhi_epi8(l, u);
        _mm256_storeu_si256((__m256i *)o, _mm256_permute2x128_si256(w0, w1, 0x20));
        _mm256_storeu_si256((__m256i *)(o + 32), _mm256_permute2x128_si256(w0, w1, 0x31));
        o += 64;
    }
}

AVX2_TARGET static void decode_avx2(const uint8_t *packed, size_t first, size_t count, const float *absmax, size_t blocksize,
                                    const float *quant_map, int out_format, unsigned char *out) {
    size_t out_size = scalar_format_size(out_format), i = first, end = first + count;
    unsigned char lut[16 * 4];
    while (i < end) {
        size_t block = i / blocksize, block_end = (block + 1) * blocksize;
        if (block_end > end || block_end < i) block_end = end;
        float scale = absmax[block];
        unsigned char *o = out + (i - first) * out_size;
        if (block_end - i < 64 + (i & 1)) {
            /* Too short for a vector step. */
            scalar_table(quant_map, scale, out_format, out_size, lut);
            decode_span_scalar(packed, i, block_end, lut, out_size, o);
            i = block_end;
            continue;
        }
        __m256i lo, hi;
        decode_tables(quant_map, scale, out_format, &lo, &hi);
        int have_table = 0;
        if (i & 1) {
            /* Element i (odd) is the low nibble of its byte: one element alone. */
            scalar_table(quant_map, scale, out_format, out_size, lut);
            have_table = 1;
            memcpy(o, lut + (packed[i >> 1] & 15u) * out_size, out_size);
            o += out_size;
            i++;
        }
        for (; i + 64 <= block_end; i += 64, o += 64 * out_size) decode64(packed + (i >> 1), lo, hi, out_format, o);
        if (i < block_end) {
            if (!have_table) scalar_table(quant_map, scale, out_format, out_size, lut);
            decode_span_scalar(packed, i, block_end, lut, out_size, o);
        }
        i = block_end;
    }
}

/* Quantize: max |x| of n values (integer max of the magnitude bits with NaN lanes zeroed). */
AVX2_TARGET static float absmax_avx2(const float *x, size_t n) {
    const __m256i magnitude = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), magnitude);
        __m256i a1 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8)), magnitude);
        a0 = _mm256_andnot_si256(_mm256_cmpgt_epi32(a0, inf), a0);
        a1 = _mm256_andnot_si256(_mm256_cmpgt_epi32(a1, inf), a1);
        m0 = _mm256_max_epu32(m0, a0);
        m1 = _mm256_max_epu32(m1, a1);
    }
    m0 = _mm256_max_epu32(m0, m1);
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, m0);
    uint32_t best = 0;
    for (int l = 0; l < 8; l++) best = lanes[l] > best ? lanes[l] : best;
    return scalar_absmax(x + i, n - i, bits_float(best));
}

/* The bounds arranged for a four-step branchless binary search: for non-decreasing bounds the
   count of bounds below t is found by testing bounds[7], then bounds[pos + 3], bounds[pos + 1] and
   bounds[pos] (pos the count so far), each test adding 8, 4, 2 or 1 when that bound is below t. */
struct search {
    __m256 b7, b3, b11;
    __m256 odd;  /* bounds 1, 5, 9, 13 (lanes 0-3), by pos / 4 */
    __m256 even; /* bounds 0, 2, ..., 14, by pos / 2 */
};

AVX2_TARGET static void search_of(const float *bounds, struct search *s) {
    s->b7 = _mm256_set1_ps(bounds[7]);
    s->b3 = _mm256_set1_ps(bounds[3]);
    s->b11 = _mm256_set1_ps(bounds[11]);
    s->odd = _mm256_setr_ps(bounds[1], bounds[5], bounds[9], bounds[13], bounds[13], bounds[13], bounds[13], bounds[13]);
    s->even = _mm256_setr_ps(bounds[0], bounds[2], bounds[4], bounds[6], bounds[8], bounds[10], bounds[12], bounds[14]);
}

/* Buckets of 8 values: the count of bounds below each scaled, clamped value (0 for NaN, which
   compares below nothing). */
AVX2_TARGET static inline __m256i buckets8(const float *x, __m256 inv, const struct search *s) {
    __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x), inv);
    /* MAXPS(a, b) = a > b ? a : b and MINPS(a, b) = a < b ? a : b: with a the constant these are the
       reference's (-1 >= t ? -1 : t) and (1 < t ? 1 : t), NaN included (it passes through). */
    t = _mm256_max_ps(_mm256_set1_ps(-1.0f), t);
    t = _mm256_min_ps(_mm256_set1_ps(1.0f), t);
    __m256 c1 = _mm256_cmp_ps(s->b7, t, _CMP_LT_OQ);
    __m256i pos = _mm256_and_si256(_mm256_castps_si256(c1), _mm256_set1_epi32(8));
    __m256 c2 = _mm256_cmp_ps(_mm256_blendv_ps(s->b3, s->b11, c1), t, _CMP_LT_OQ);
    pos = _mm256_or_si256(pos, _mm256_and_si256(_mm256_castps_si256(c2), _mm256_set1_epi32(4)));
    __m256 c3 = _mm256_cmp_ps(_mm256_permutevar8x32_ps(s->odd, _mm256_srli_epi32(pos, 2)), t, _CMP_LT_OQ);
    pos = _mm256_or_si256(pos, _mm256_and_si256(_mm256_castps_si256(c3), _mm256_set1_epi32(2)));
    __m256 c4 = _mm256_cmp_ps(_mm256_permutevar8x32_ps(s->even, _mm256_srli_epi32(pos, 1)), t, _CMP_LT_OQ);
    return _mm256_or_si256(pos, _mm256_and_si256(_mm256_castps_si256(c4), _mm256_set1_epi32(1)));
}

/* Codes of 32 values (the first at an even index) packed into 16 bytes at p. */
AVX2_TARGET static inline void quantize32(const float *x, __m256 inv, const struct search *bound, __m256i order, uint8_t *p) {
    __m256i c0 = buckets8(x, inv, bound), c1 = buckets8(x + 8, inv, bound);
    __m256i c2 = buckets8(x + 16, inv, bound), c3 = buckets8(x + 24, inv, bound);
    /* Narrow to bytes; the packs interleave 128-bit lanes, dword order 0,4,1,5,2,6,3,7 restores it. */
    __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
    bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    __m256i codes = _mm256_shuffle_epi8(order, bytes);
    /* code[2j] * 16 + code[2j+1] per 16-bit word, then the 16 words to bytes. */
    __m256i pairs = _mm256_maddubs_epi16(codes, _mm256_set1_epi16(0x0110));
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(pairs, pairs), 0x08);
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(packed));
}

AVX2_TARGET static void quantize_avx2(const float *values, size_t count, size_t blocksize, const float *bounds, const uint8_t *order,
                                      uint8_t *packed, float *absmax) {
    struct search bound;
    search_of(bounds, &bound);
    __m256i order_table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)order));
    for (size_t start = 0, block = 0; start < count; start += blocksize, block++) {
        size_t n = count - start < blocksize ? count - start : blocksize, end = start + n, i = start;
        float m = absmax_avx2(values + start, n);
        absmax[block] = m;
        float inv = inverse_of(m);
        if (i & 1) {
            put_code(packed, i, code_of(values[i], inv, bounds, order));
            i++;
        }
        __m256 vinv = _mm256_set1_ps(inv);
        for (; i + 32 <= end; i += 32) quantize32(values + i, vinv, &bound, order_table, packed + (i >> 1));
        for (; i < end; i++) put_code(packed, i, code_of(values[i], inv, bounds, order));
    }
}

#endif

/* MARK: - Entry points */

uint32_t lora_bnb4_decode_isa(int isa, const uint8_t *packed, size_t first, size_t count, const float *absmax,
                              size_t blocksize, const float quant_map[16], int out_format, void *out) {
    int best = lora_best_isa();
    if (isa == LORA_ISA_BEST) isa = best;
    if (isa < LORA_ISA_SCALAR || isa > best) return LORA_BNB4_UNSUPPORTED;
#if LORA_VECTOR_KERNELS
    if (isa != LORA_ISA_SCALAR) {
        decode_avx2(packed, first, count, absmax, blocksize, quant_map, out_format, out);
        return 0;
    }
#endif
    decode_scalar(packed, first, count, absmax, blocksize, quant_map, out_format, out);
    return 0;
}

void lora_bnb4_decode(const uint8_t *packed, size_t first, size_t count, const float *absmax, size_t blocksize,
                      const float quant_map[16], int out_format, void *out) {
    lora_bnb4_decode_isa(LORA_ISA_BEST, packed, first, count, absmax, blocksize, quant_map, out_format, out);
}

void lora_bnb4_resolve_absmax(const uint8_t *codes, size_t first_block, size_t count, const float nested_map[256],
                              const float *nested_absmax, size_t nested_blocksize, float offset, float *out) {
    for (size_t j = 0; j < count; j++) {
        size_t b = first_block + j;
        /* Two statements and FP_CONTRACT OFF: the product is rounded before the add. */
        float scaled = nested_map[codes[b]] * nested_absmax[b / nested_blocksize];
        out[j] = scaled + offset;
    }
}

uint32_t lora_bnb4_quantize_isa(int isa, const float *values, size_t count, size_t blocksize, const float bounds[15],
                                const uint8_t order[16], uint8_t *packed, float *absmax) {
    int best = lora_best_isa();
    if (isa == LORA_ISA_BEST) isa = best;
    if (isa < LORA_ISA_SCALAR || isa > best) return LORA_BNB4_UNSUPPORTED;
#if LORA_VECTOR_KERNELS
    if (isa != LORA_ISA_SCALAR) {
        quantize_avx2(values, count, blocksize, bounds, order, packed, absmax);
        return 0;
    }
#endif
    quantize_scalar(values, count, blocksize, bounds, order, packed, absmax);
    return 0;
}

void lora_bnb4_quantize(const float *values, size_t count, size_t blocksize, const float bounds[15],
                        const uint8_t order[16], uint8_t *packed, float *absmax) {
    lora_bnb4_quantize_isa(LORA_ISA_BEST, values, count, blocksize, bounds, order, packed, absmax);
}

/* MARK: - Requantize helpers */

void lora_bnb4_block_absmax(const float *values, size_t count, size_t blocksize, float *absmax) {
#if LORA_VECTOR_KERNELS
    int vector = lora_best_isa() != LORA_ISA_SCALAR;
#endif
    for (size_t b = 0, i = 0; i < count; b++, i += blocksize) {
        size_t n = count - i < blocksize ? count - i : blocksize;
#if LORA_VECTOR_KERNELS
        if (vector) { absmax[b] = absmax_avx2(values + i, n); continue; }
#endif
        absmax[b] = absmax_scalar(values + i, n);
    }
}

/* n elements of `format` at p widened exactly to fp32. */
static void widen(const unsigned char *p, int format, size_t n, float *out) {
    if (format == LORA_F32) {
        memcpy(out, p, n * 4);
        return;
    }
    if (format == LORA_BF16) {
        /* A shift per element: a loop the compiler vectorizes. */
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(out + i, &bits, 4);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        out[i] = half_to_float(h);
    }
}

/* Lane l of each accumulator sums the elements whose index is l mod 4, in index order. */
static void delta_lanes_scalar(const float *t, const float *o, const float *g, size_t n, double *d, double *w, double *q) {
    for (size_t k = 0; k < n; k += 4) {
        for (int l = 0; l < 4; l++) {
            double ov = o[k + l], a = (double)t[k + l] - ov, b = (double)g[k + l] - ov;
            d[l] += a * b;
            w[l] += a * a;
            q[l] += b * b;
        }
    }
}

#if LORA_VECTOR_KERNELS
/* The same four lanes, four doubles per AVX register (separate multiplies and adds: no FMA). */
AVX2_TARGET static void delta_lanes_avx2(const float *t, const float *o, const float *g, size_t n, double *d, double *w, double *q) {
    __m256d vd = _mm256_loadu_pd(d), vw = _mm256_loadu_pd(w), vq = _mm256_loadu_pd(q);
    for (size_t k = 0; k < n; k += 4) {
        __m256d ov = _mm256_cvtps_pd(_mm_loadu_ps(o + k));
        __m256d a = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(t + k)), ov);
        __m256d b = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(g + k)), ov);
        vd = _mm256_add_pd(vd, _mm256_mul_pd(a, b));
        vw = _mm256_add_pd(vw, _mm256_mul_pd(a, a));
        vq = _mm256_add_pd(vq, _mm256_mul_pd(b, b));
    }
    _mm256_storeu_pd(d, vd);
    _mm256_storeu_pd(w, vw);
    _mm256_storeu_pd(q, vq);
}
#endif

void lora_delta_sums(const float *target, const void *old, const void *back, int format, size_t count, double sums[3]) {
    const unsigned char *o = old, *g = back;
    size_t size = scalar_format_size(format);
    double d[4] = {0, 0, 0, 0}, w[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
#if LORA_VECTOR_KERNELS
    int vector = lora_best_isa() != LORA_ISA_SCALAR;
#endif
    enum { SPAN = 1024 };
    float ow[SPAN], gw[SPAN];
    size_t whole = count / 4 * 4;
    for (size_t k = 0; k < whole; k += SPAN) {
        size_t n = whole - k < SPAN ? whole - k : SPAN;
        widen(o + k * size, format, n, ow);
        widen(g + k * size, format, n, gw);
#if LORA_VECTOR_KERNELS
        if (vector) { delta_lanes_avx2(target + k, ow, gw, n, d, w, q); continue; }
#endif
        delta_lanes_scalar(target + k, ow, gw, n, d, w, q);
    }
    for (size_t k = whole; k < count; k++) {
        double ov = scalar_load(o + k * size, format);
        double a = (double)target[k] - ov, b = (double)scalar_load(g + k * size, format) - ov;
        d[0] += a * b;
        w[0] += a * a;
        q[0] += b * b;
    }
    sums[0] = (d[0] + d[1]) + (d[2] + d[3]);
    sums[1] = (w[0] + w[1]) + (w[2] + w[3]);
    sums[2] = (q[0] + q[1]) + (q[2] + q[3]);
}
