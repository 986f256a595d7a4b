/* Run-time choice of the kernels' instruction set. */
#include "kernels_isa.h"

#if defined(__x86_64__) && defined(__clang__)
static int level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return LORA_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return LORA_ISA_AVX2;
    return LORA_ISA_NONE;
}

int lora_best_isa(void) {
    static int cached = -1;
    int l = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (l < 0) {
        l = level();
        __atomic_store_n(&cached, l, __ATOMIC_RELAXED);
    }
    return l;
}
#else
int lora_best_isa(void) { return LORA_ISA_NONE; }
#endif
