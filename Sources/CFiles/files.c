/* File operations glibc declares only under _GNU_SOURCE, which Swift's Glibc module leaves out. */
#define _GNU_SOURCE
#include "files.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

int lora_preallocate(int fd, int64_t length) {
#ifdef __linux__
    if (length <= 0) return 0;
    return fallocate(fd, 0, 0, (off_t)length) == 0 ? 0 : errno;
#else
    (void)fd; (void)length;
    return EOPNOTSUPP;
#endif
}

int lora_start_writeback(int fd, int64_t offset, int64_t length) {
#ifdef __linux__
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE) == 0 ? 0 : errno;
#else
    (void)fd; (void)offset; (void)length;
    return ENOSYS;
#endif
}

int lora_rename_noreplace(const char *from, const char *to) {
#ifdef __linux__
    return renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0 ? 0 : errno;
#else
    (void)from; (void)to;
    return ENOSYS;
#endif
}

int lora_rename_exchange(const char *a, const char *b) {
#ifdef __linux__
    return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0 ? 0 : errno;
#else
    (void)a; (void)b;
    return ENOSYS;
#endif
}

int lora_lock_exclusive(int fd) {
    return flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : errno;
}

static int signal_pipe[2] = {-1, -1};
static const char *bus_text = "";

static void forward_signal(int sig) {
    int saved = errno;
    unsigned char byte = (unsigned char)sig;
    ssize_t ignored = write(signal_pipe[1], &byte, 1);
    (void)ignored;
    errno = saved;
}

static void bus_signal(int sig) {
    ssize_t ignored = write(2, bus_text, strlen(bus_text));
    (void)ignored;
    alarm(10);
    forward_signal(sig);
    for (;;) pause();
}

int lora_signals_install(const char *bus_message) {
    if (pipe2(signal_pipe, O_CLOEXEC) != 0) return errno;
    bus_text = bus_message;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    action.sa_handler = forward_signal;
    int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) if (sigaction(sigs[i], &action, NULL) != 0) return errno;
    action.sa_handler = bus_signal;
    if (sigaction(SIGBUS, &action, NULL) != 0) return errno;
    signal(SIGXFSZ, SIG_IGN);
    return 0;
}

int lora_signals_wait(void) {
    unsigned char byte = 0;
    for (;;) {
        ssize_t n = read(signal_pipe[0], &byte, 1);
        if (n == 1) return byte;
        if (n < 0 && errno == EINTR) continue;
        return 0;
    }
}

void lora_die_of_signal(int sig) {
    signal(sig, SIG_DFL);
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, sig);
    pthread_sigmask(SIG_UNBLOCK, &only, NULL);
    raise(sig);
    _exit(128 + sig);
}
