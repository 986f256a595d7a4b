#ifndef LORA_TOOL_COPENBLAS_SHIM_H
#define LORA_TOOL_COPENBLAS_SHIM_H
#include <cblas.h>

/* Debian's OpenBLAS exports LAPACK but ships no lapack.h: declare the one routine we use.
   sgesdd: SVD of a column-major m×n matrix, divide and conquer. */
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda,
             float *s, float *u, const int *ldu, float *vt, const int *ldvt,
             float *work, const int *lwork, int *iwork, int *info);
/* dgesdd: the same in float64 (combine's small cores and formed deltas). */
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda,
             double *s, double *u, const int *ldu, double *vt, const int *ldvt,
             double *work, const int *lwork, int *iwork, int *info);
#endif
