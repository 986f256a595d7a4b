/* File operations glibc declares only under _GNU_SOURCE, which Swift's Glibc module leaves out. */
#define _GNU_SOURCE
#include "files.h"
#include <errno.h>
#include <fcntl.h>

int lora_preallocate(int fd, int64_t length) {
#ifdef __linux__
    if (length <= 0) return 0;
    return fallocate(fd, 0, 0, (off_t)length) == 0 ? 0 : errno;
#else
    (void)fd; (void)length;
    return EOPNOTSUPP;
#endif
}
