#ifndef LORA_TOOL_FILES_H
#define LORA_TOOL_FILES_H
#include <stdint.h>
/* Included here too so that builds whose module cache predates it see it. */
#include "sha256.h"

/* Reserves `length` bytes of disk for the file open on `fd` (Linux fallocate, mode 0: the size
 * becomes `length`, the blocks are allocated as unwritten extents). Returns 0, or the errno:
 * ENOSPC / EFBIG mean the output cannot fit; EOPNOTSUPP / ENOSYS mean the file system cannot
 * preallocate (callers then just write). Unlike posix_fallocate it never falls back to writing
 * zeros. */
int lora_preallocate(int fd, int64_t length);

/* Starts writing the dirty page-cache pages of bytes [offset, offset + length) of `fd` to the disk
 * without waiting (Linux sync_file_range with SYNC_FILE_RANGE_WRITE), so that a later fsync has
 * less left to wait for. Durability still needs that fsync. Returns 0 or the errno (ENOSYS /
 * EOPNOTSUPP elsewhere: callers just go on). */
int lora_start_writeback(int fd, int64_t offset, int64_t length);
/* rename(2) that never replaces: fails with EEXIST when `to` exists (even as an empty directory).
 * Returns 0 or the errno; EINVAL / ENOSYS mean the file system or kernel cannot do it atomically. */
int lora_rename_noreplace(const char *from, const char *to);

/* Atomically swaps two existing paths (Linux RENAME_EXCHANGE): at no instant is either name
 * missing. Returns 0 or the errno; EINVAL / ENOSYS mean the file system or kernel cannot. */
int lora_rename_exchange(const char *a, const char *b);

/* flock(fd, LOCK_EX | LOCK_NB). Returns 0, EWOULDBLOCK when another process holds the lock, or
 * another errno. */
int lora_lock_exclusive(int fd);

/* Self-pipe signal delivery. lora_signals_install makes SIGINT, SIGTERM and SIGHUP (and SIGBUS)
 * write their number to a pipe from a handler that does nothing else (async-signal-safe: one
 * write(2)); SIGBUS also writes `bus_message` to stderr and then sleeps until the process ends
 * (alarm(10) as a last resort). lora_signals_wait blocks a normal thread until a signal came and
 * returns its number. lora_die_of_signal restores the default action and re-raises it.
 * Returns 0 or the errno. */
int lora_signals_install(const char *bus_message);
int lora_signals_wait(void);
void lora_die_of_signal(int sig);
#endif
