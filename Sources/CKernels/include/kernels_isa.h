#ifndef LORA_TOOL_KERNELS_ISA_H
#define LORA_TOOL_KERNELS_ISA_H

/* Element formats of stored tensors (little-endian, any alignment). */
enum lora_format { LORA_F32 = 0, LORA_F16 = 1, LORA_BF16 = 2 };

/* Instruction sets of the kernels. The merge kernel does the same arithmetic, bit for bit, in
   portable scalar C and at two vector widths. The probe and difference kernels have no scalar path
   (LORA_ISA_NONE = LORA_ISA_SCALAR): their callers then compute in Swift. */
enum lora_isa { LORA_ISA_BEST = -1, LORA_ISA_SCALAR = 0, LORA_ISA_NONE = 0, LORA_ISA_AVX2 = 1, LORA_ISA_AVX512 = 2 };

/* The best instruction set of this CPU for the kernels (x86-64 with AVX2, FMA and F16C, or AVX-512
   F/BW/VL/DQ), or LORA_ISA_SCALAR. */
int lora_best_isa(void);
#endif
