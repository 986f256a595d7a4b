/* ΔW for extract: see include/difference_kernel.h. One pass: widen both, subtract in fp32, square
 * and sum in fp64. */
#include "difference_kernel.h"
#include "vectors.h"

#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__) && defined(__clang__)

typedef double v8d __attribute__((vector_size(64)));

INLINE void accumulate(v16f d, v16f w, v8d *dsq, v8d *bsq) {
    v8d dl = __builtin_convertvector(__builtin_shufflevector(d, d, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
    v8d dh = __builtin_convertvector(__builtin_shufflevector(d, d, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
    v8d wl = __builtin_convertvector(__builtin_shufflevector(w, w, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
    v8d wh = __builtin_convertvector(__builtin_shufflevector(w, w, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
    dsq[0] = __builtin_elementwise_fma(dl, dl, dsq[0]);
    dsq[1] = __builtin_elementwise_fma(dh, dh, dsq[1]);
    bsq[0] = __builtin_elementwise_fma(wl, wl, bsq[0]);
    bsq[1] = __builtin_elementwise_fma(wh, wh, bsq[1]);
}

INLINE double total(const v8d *v) {
    double s = 0;
    for (int h = 0; h < 2; h++) s += ((v[h][0] + v[h][1]) + (v[h][2] + v[h][3])) + ((v[h][4] + v[h][5]) + (v[h][6] + v[h][7]));
    return s;
}

INLINE void run_difference(const unsigned char *t, int tf, const unsigned char *b, int bf, size_t count, float *delta, double *dsq, double *bsq) {
    v8d ds[2] = {{0}, {0}}, bs[2] = {{0}, {0}};
    size_t ts = format_size(tf), bsz = format_size(bf), i = 0;
    for (; i + 16 <= count; i += 16) {
        v16f tv = load_values(t + i * ts, tf, 16, 1), bv = load_values(b + i * bsz, bf, 16, 1);
        v16f d = tv - bv;
        memcpy(delta + i, &d, 64);
        accumulate(d, bv, ds, bs);
    }
    if (i < count) {
        size_t n = count - i;
        v16f tv = load_values(t + i * ts, tf, n, 0), bv = load_values(b + i * bsz, bf, n, 0);
        v16f d = tv - bv;  /* zero past n */
        memcpy(delta + i, &d, n * 4);
        accumulate(d, bv, ds, bs);
    }
    *dsq += total(ds);
    *bsq += total(bs);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
static void difference_avx512(const unsigned char *t, int tf, const unsigned char *b, int bf, size_t count, float *delta, double *dsq, double *bsq) {
    run_difference(t, tf, b, bf, count, delta, dsq, bsq);
}

__attribute__((target("avx2,fma,f16c")))
static void difference_avx2(const unsigned char *t, int tf, const unsigned char *b, int bf, size_t count, float *delta, double *dsq, double *bsq) {
    run_difference(t, tf, b, bf, count, delta, dsq, bsq);
}

uint32_t lora_difference(int isa, const void *tuned, int tuned_format, const void *base, int base_format, size_t count,
                         float *delta, double *delta_sq, double *base_sq) {
    int best = lora_best_isa();
    if (isa == LORA_ISA_BEST) isa = best;
    if (isa > best || isa == LORA_ISA_NONE) return 4;
    if (isa == LORA_ISA_AVX512) difference_avx512(tuned, tuned_format, base, base_format, count, delta, delta_sq, base_sq);
    else difference_avx2(tuned, tuned_format, base, base_format, count, delta, delta_sq, base_sq);
    return 0;
}

#else

uint32_t lora_difference(int isa, const void *tuned, int tuned_format, const void *base, int base_format, size_t count,
                         float *delta, double *delta_sq, double *base_sq) {
    (void)isa; (void)tuned; (void)tuned_format; (void)base; (void)base_format; (void)count;
    (void)delta; (void)delta_sq; (void)base_sq;
    return 4;
}

#endif
