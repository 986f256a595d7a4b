#ifndef LORA_TOOL_COPENBLAS_SHIM_H
#define LORA_TOOL_COPENBLAS_SHIM_H
#include <cblas.h>

/* Debian's OpenBLAS exports LAPACK but ships no lapack.h: declare the one routine we use.
   sgesdd: SVD of a column-major m×n matrix, divide and conquer. */
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda,
             float *s, float *u, const int *ldu, float *vt, const int *ldvt,
             float *work, const int *lwork, int *iwork, int *info);
#endif
