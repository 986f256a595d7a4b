#ifndef LORA_TOOL_CZSTD_SHIM_H
#define LORA_TOOL_CZSTD_SHIM_H
#include <zstd.h>
#endif
