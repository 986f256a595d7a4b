/* Fixed-order matrix products: see include/product_kernel.h for the contract. Transposed operands
 * are first copied into row-major form, so one loop nest does all the arithmetic: per row i, the
 * accumulators of all n columns take the k terms in order (vectorizable across j, never reordered
 * over p). */
#include "product_kernel.h"
#include <stdlib.h>

#pragma STDC FP_CONTRACT OFF

#define PRODUCT(NAME, T)                                                                                  \
    int NAME(size_t m, size_t n, size_t k, T alpha, const T *a, int trans_a, size_t lda, const T *b,      \
             int trans_b, size_t ldb, T beta, T *c) {                                                     \
        if (m == 0 || n == 0) return 0;                                                                   \
        T *packed_a = NULL, *packed_b = NULL, *acc = malloc(n * sizeof(T));                               \
        if (trans_a && k) packed_a = malloc(m * k * sizeof(T));                                           \
        if (trans_b && k) packed_b = malloc(k * n * sizeof(T));                                           \
        if (!acc || (trans_a && k && !packed_a) || (trans_b && k && !packed_b)) {                         \
            free(acc); free(packed_a); free(packed_b);                                                    \
            return 1;                                                                                     \
        }                                                                                                 \
        if (packed_a) {                                                                                   \
            for (size_t p = 0; p < k; p++)                                                                \
                for (size_t i = 0; i < m; i++) packed_a[i * k + p] = a[p * lda + i];                      \
            a = packed_a; lda = k;                                                                        \
        }                                                                                                 \
        if (packed_b) {                                                                                   \
            for (size_t j = 0; j < n; j++)                                                                \
                for (size_t p = 0; p < k; p++) packed_b[p * n + j] = b[j * ldb + p];                      \
            b = packed_b; ldb = n;                                                                        \
        }                                                                                                 \
        for (size_t i = 0; i < m; i++) {                                                                  \
            for (size_t j = 0; j < n; j++) acc[j] = 0;                                                    \
            for (size_t p = 0; p < k; p++) {                                                              \
                T x = a[i * lda + p];                                                                     \
                const T *row = b + p * ldb;                                                               \
                for (size_t j = 0; j < n; j++) {                                                          \
                    T term = x * row[j];                                                                  \
                    acc[j] = acc[j] + term;                                                               \
                }                                                                                         \
            }                                                                                             \
            T *out = c + i * n;                                                                           \
            if (beta == 0) {                                                                              \
                for (size_t j = 0; j < n; j++) out[j] = alpha * acc[j];                                   \
            } else {                                                                                      \
                for (size_t j = 0; j < n; j++) {                                                          \
                    T scaled = beta * out[j];                                                             \
                    T term = alpha * acc[j];                                                              \
                    out[j] = scaled + term;                                                               \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
        free(acc); free(packed_a); free(packed_b);                                                        \
        return 0;                                                                                         \
    }

PRODUCT(lora_product_f32, float)
PRODUCT(lora_product_f64, double)
