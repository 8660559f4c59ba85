// LD_PRELOAD shim for tests/durability_order.rs: logs, one line per call, the file
// system calls that decide what survives a power cut, with the paths involved:
//
//   create <path>          open(2) with O_CREAT
//   mkdir <path>
//   fsync <path>           fsync or fdatasync (the path of the descriptor)
//   rename <from> <to>
//
// to the file named by FS_TRACE_FILE (appended with one write(2) per line). Every
// call is passed on unchanged.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int trace_fd = -2;

static void emit(const char *line) {
    if (trace_fd == -2) {
        const char *path = getenv("FS_TRACE_FILE");
        int (*real_open)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
        trace_fd = path ? real_open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : -1;
    }
    if (trace_fd >= 0) {
        ssize_t r = write(trace_fd, line, strlen(line));
        (void)r;
    }
}

static void emit_path(const char *what, const char *a, const char *b) {
    char line[8192];
    char abs_a[4096];
    if (a[0] != '/' && getcwd(abs_a, sizeof abs_a)) {
        strncat(abs_a, "/", sizeof abs_a - strlen(abs_a) - 1);
        strncat(abs_a, a, sizeof abs_a - strlen(abs_a) - 1);
        a = abs_a;
    }
    if (b)
        snprintf(line, sizeof line, "%s %s %s\n", what, a, b);
    else
        snprintf(line, sizeof line, "%s %s\n", what, a);
    emit(line);
}

static void emit_fd(const char *what, int fd) {
    char proc[64], path[4096];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, path, sizeof path - 1);
    if (n < 0) return;
    path[n] = 0;
    emit_path(what, path, NULL);
}

#define REAL(name, ret, ...) \
    static ret (*real)(__VA_ARGS__); \
    if (!real) real = dlsym(RTLD_NEXT, name)

int fsync(int fd) {
    REAL("fsync", int, int);
    int r = real(fd);
    emit_fd("fsync", fd);
    return r;
}

int fdatasync(int fd) {
    REAL("fdatasync", int, int);
    int r = real(fd);
    emit_fd("fsync", fd);
    return r;
}

int rename(const char *from, const char *to) {
    REAL("rename", int, const char *, const char *);
    int r = real(from, to);
    if (r == 0) {
        char abs_to[4096];
        if (to[0] != '/' && getcwd(abs_to, sizeof abs_to)) {
            strncat(abs_to, "/", sizeof abs_to - strlen(abs_to) - 1);
            strncat(abs_to, to, sizeof abs_to - strlen(abs_to) - 1);
            to = abs_to;
        }
        emit_path("rename", from, to);
    }
    return r;
}

int mkdir(const char *path, mode_t mode) {
    REAL("mkdir", int, const char *, mode_t);
    int r = real(path, mode);
    if (r == 0) emit_path("mkdir", path, NULL);
    return r;
}

static int traced_open(const char *name, int dirfd, const char *path, int flags, mode_t mode) {
    int r;
    if (dirfd == -1) {
        int (*real)(const char *, int, ...) = dlsym(RTLD_NEXT, name);
        r = real(path, flags, mode);
    } else {
        int (*real)(int, const char *, int, ...) = dlsym(RTLD_NEXT, name);
        r = real(dirfd, path, flags, mode);
    }
    if (r >= 0 && (flags & O_CREAT)) emit_fd("create", r);
    return r;
}

#define OPEN(name)                                                  \
    int name(const char *path, int flags, ...) {                    \
        mode_t mode = 0;                                            \
        if (flags & (O_CREAT | O_TMPFILE)) {                        \
            va_list ap; va_start(ap, flags);                        \
            mode = va_arg(ap, mode_t); va_end(ap);                  \
        }                                                           \
        return traced_open(#name, -1, path, flags, mode);           \
    }
#define OPENAT(name)                                                \
    int name(int dirfd, const char *path, int flags, ...) {         \
        mode_t mode = 0;                                            \
        if (flags & (O_CREAT | O_TMPFILE)) {                        \
            va_list ap; va_start(ap, flags);                        \
            mode = va_arg(ap, mode_t); va_end(ap);                  \
        }                                                           \
        return traced_open(#name, dirfd, path, flags, mode);        \
    }
OPEN(open)
OPEN(open64)
OPENAT(openat)
OPENAT(openat64)
