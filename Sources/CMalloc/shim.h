#ifndef LORA_TOOL_CMALLOC_SHIM_H
#define LORA_TOOL_CMALLOC_SHIM_H
/* glibc malloc tuning (mallopt): not exported by the Glibc module. */
#include <malloc.h>
#endif
