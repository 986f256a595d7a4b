/* Verify's probe products: see include/probe_kernel.h for the contract.
 *
 * One pass per row: widen 16 stored base and merged values, split them into two 8-double halves,
 * and update 8 difference sums, 8 base-product sums and the squared norm (17 accumulators, all in
 * AVX-512 registers). x (8 × cols doubles) streams from L2 once per row. */
#include "probe_kernel.h"
#include "vectors.h"

#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__) && defined(__clang__)

typedef double v8d __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));

INLINE v8d load_x(const double *p, size_t n, int full) {
    v8d v;
    if (full) {
        memcpy(&v, p, 64);
    } else {
        double padded[8] = {0};
        memcpy(padded, p, n * sizeof(double));
        memcpy(&v, padded, 64);
    }
    return v;
}

INLINE double sum_lanes(v8d v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

struct probe_job {
    const unsigned char *base, *merged;
    int base_format, merged_format;
    size_t cols;
    const double *x;
};

/* Elements [i, i + n) of one row, n ≤ 8 (`full`: n == 8), into the accumulators. */
INLINE void half(const struct probe_job *jb, v8f wf, v8f mf, size_t i, size_t n, int full, v8d *accD, v8d *accB, v8d *accN) {
    v8d w = __builtin_convertvector(wf, v8d), m = __builtin_convertvector(mf, v8d);
    v8d d = m - w;
    for (int p = 0; p < 8; p++) {
        v8d x = load_x(jb->x + p * jb->cols + i, n, full);
        accD[p] = __builtin_elementwise_fma(d, x, accD[p]);
        accB[p] = __builtin_elementwise_fma(w, x, accB[p]);
    }
    *accN = __builtin_elementwise_fma(w, w, *accN);
}

INLINE void row(const struct probe_job *jb, size_t o, double *difference, double *product, double *norm2) {
    v8d accD[8] = {0}, accB[8] = {0}, accN = {0};
    size_t bs = format_size(jb->base_format), ms = format_size(jb->merged_format);
    const unsigned char *b = jb->base + o * jb->cols * bs, *m = jb->merged + o * jb->cols * ms;
    size_t i = 0;
    for (; i + 16 <= jb->cols; i += 16) {
        v16f w = load_values(b + i * bs, jb->base_format, 16, 1), mv = load_values(m + i * ms, jb->merged_format, 16, 1);
        half(jb, __builtin_shufflevector(w, w, 0, 1, 2, 3, 4, 5, 6, 7), __builtin_shufflevector(mv, mv, 0, 1, 2, 3, 4, 5, 6, 7),
             i, 8, 1, accD, accB, &accN);
        half(jb, __builtin_shufflevector(w, w, 8, 9, 10, 11, 12, 13, 14, 15), __builtin_shufflevector(mv, mv, 8, 9, 10, 11, 12, 13, 14, 15),
             i + 8, 8, 1, accD, accB, &accN);
    }
    if (i < jb->cols) {
        size_t n = jb->cols - i;  /* 1..15, zero-padded: padding adds nothing */
        v16f w = load_values(b + i * bs, jb->base_format, n, 0), mv = load_values(m + i * ms, jb->merged_format, n, 0);
        half(jb, __builtin_shufflevector(w, w, 0, 1, 2, 3, 4, 5, 6, 7), __builtin_shufflevector(mv, mv, 0, 1, 2, 3, 4, 5, 6, 7),
             i, n < 8 ? n : 8, 0, accD, accB, &accN);
        if (n > 8)
            half(jb, __builtin_shufflevector(w, w, 8, 9, 10, 11, 12, 13, 14, 15),
                 __builtin_shufflevector(mv, mv, 8, 9, 10, 11, 12, 13, 14, 15), i + 8, n - 8, 0, accD, accB, &accN);
    }
    for (int p = 0; p < 8; p++) {
        difference[o * 8 + p] = sum_lanes(accD[p]);
        product[o * 8 + p] = sum_lanes(accB[p]);
    }
    norm2[o] = sum_lanes(accN);
}

INLINE void run_probe(const struct probe_job *jb, size_t rows, double *difference, double *product, double *norm2) {
    for (size_t o = 0; o < rows; o++) row(jb, o, difference, product, norm2);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static void probe_avx512(const struct probe_job *jb, size_t rows, double *d, double *p, double *n) { run_probe(jb, rows, d, p, n); }

__attribute__((target("avx2,fma,f16c")))
static void probe_avx2(const struct probe_job *jb, size_t rows, double *d, double *p, double *n) { run_probe(jb, rows, d, p, n); }

uint32_t lora_probe_rows(int isa, const void *base, int base_format, const void *merged, int merged_format, size_t rows,
                         size_t cols, const double *x, double *difference, double *product, double *norm2) {
    int best = lora_best_isa();
    if (isa == LORA_ISA_BEST) isa = best;
    if (isa > best || isa == LORA_ISA_NONE) return LORA_PROBE_UNSUPPORTED;
    struct probe_job jb = {base, merged, base_format, merged_format, cols, x};
    if (isa == LORA_ISA_AVX512) probe_avx512(&jb, rows, difference, product, norm2);
    else probe_avx2(&jb, rows, difference, product, norm2);
    return 0;
}

#else

uint32_t lora_probe_rows(int isa, const void *base, int base_format, const void *merged, int merged_format, size_t rows,
                         size_t cols, const double *x, double *difference, double *product, double *norm2) {
    (void)isa; (void)base; (void)base_format; (void)merged; (void)merged_format; (void)rows; (void)cols;
    (void)x; (void)difference; (void)product; (void)norm2;
    return LORA_PROBE_UNSUPPORTED;
}

#endif
