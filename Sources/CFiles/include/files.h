#ifndef LORA_TOOL_FILES_H
#define LORA_TOOL_FILES_H
#include <stdint.h>

/* Reserves `length` bytes of disk for the file open on `fd` (Linux fallocate, mode 0: the size
 * becomes `length`, the blocks are allocated as unwritten extents). Returns 0, or the errno:
 * ENOSPC / EFBIG mean the output cannot fit; EOPNOTSUPP / ENOSYS mean the file system cannot
 * preallocate (callers then just write). Unlike posix_fallocate it never falls back to writing
 * zeros. */
int lora_preallocate(int fd, int64_t length);
#endif
