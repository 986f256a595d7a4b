#ifndef LORA_TOOL_CFUZZER_SHIM_H
#define LORA_TOOL_CFUZZER_SHIM_H
#include <stddef.h>
#include <stdint.h>
/* libFuzzer's driver (compiler-rt), linked by -sanitize=fuzzer. */
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
