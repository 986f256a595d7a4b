#ifndef LORA_TOOL_CJSONC_SHIM_H
#define LORA_TOOL_CJSONC_SHIM_H
#include <json-c/json.h>
#endif
