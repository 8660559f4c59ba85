/*
 * LD_PRELOAD shim for the power-loss suite's teeth: a disk that lies about
 * durability. Every way a process asks for its writes to reach the disk returns
 * success without doing anything: fsync, fdatasync, msync, sync_file_range, syncfs,
 * sync, and O_SYNC / O_DSYNC on open (LMDB writes its meta page through an O_DSYNC
 * descriptor). Data then reaches the disk only when the kernel writes it back on its
 * own, so a power cut loses what the node acknowledged; the suite must notice.
 *
 * Built at test time: gcc -shared -fPIC -O2 -o noop_fsync.so noop_fsync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
int msync(void *addr, size_t len, int flags) { (void)addr; (void)len; (void)flags; return 0; }
int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
{
    (void)fd; (void)offset; (void)nbytes; (void)flags;
    return 0;
}
int syncfs(int fd) { (void)fd; return 0; }
void sync(void) {}

/* O_SYNC includes O_DSYNC's bit on Linux; clear both. */
static int unsynced(int flags) { return flags & ~(O_SYNC | O_DSYNC); }

static int wants_mode(int flags)
{
    return (flags & O_CREAT) || ((flags & O_TMPFILE) == O_TMPFILE);
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static mode_t mode_arg(int flags, va_list ap)
{
    return wants_mode(flags) ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...)
{
    static open_fn real;
    if (!real)
        real = (open_fn)dlsym(RTLD_NEXT, "open");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return real(path, unsynced(flags), mode);
}

int open64(const char *path, int flags, ...)
{
    static open_fn real;
    if (!real)
        real = (open_fn)dlsym(RTLD_NEXT, "open64");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return real(path, unsynced(flags), mode);
}

int openat(int dir, const char *path, int flags, ...)
{
    static openat_fn real;
    if (!real)
        real = (openat_fn)dlsym(RTLD_NEXT, "openat");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return real(dir, path, unsynced(flags), mode);
}

int openat64(int dir, const char *path, int flags, ...)
{
    static openat_fn real;
    if (!real)
        real = (openat_fn)dlsym(RTLD_NEXT, "openat64");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return real(dir, path, unsynced(flags), mode);
}
