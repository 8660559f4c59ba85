/*
 * LD_PRELOAD shim for the power-loss suite: widens the window of metadata writes.
 * fsync and fdatasync of a file whose path (readlink /proc/self/fd/N) contains
 * ".meta", "CURRENT" or "DIRTY" first append a line to the file named by
 * PL_SHIM_MARKER ("<unix ms> <delay ms> <path>"), then sleep PL_SHIM_DELAY_MS
 * (default 300) milliseconds, then call the real function. With PL_SHIM_ARMED set,
 * only while the file it names exists (so that start-up is not slowed). The test
 * watches the marker file and cuts the power while such a delay is in progress.
 *
 * Built at test time: gcc -shared -fPIC -O2 -o delay_meta_fsync.so delay_meta_fsync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *const WATCHED[] = {".meta", "CURRENT", "DIRTY"};

static int watched(int fd, char *path, size_t size)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    for (size_t i = 0; i < sizeof WATCHED / sizeof WATCHED[0]; i++)
        if (strstr(path, WATCHED[i]))
            return 1;
    return 0;
}

static void delay(int fd)
{
    char path[4096];
    if (!watched(fd, path, sizeof path))
        return;
    const char *armed = getenv("PL_SHIM_ARMED");
    if (armed && access(armed, F_OK) != 0)
        return;
    const char *d = getenv("PL_SHIM_DELAY_MS");
    long ms = d ? atol(d) : 300;
    const char *marker = getenv("PL_SHIM_MARKER");
    if (marker) {
        struct timeval now;
        gettimeofday(&now, NULL);
        char line[4200];
        int len = snprintf(line, sizeof line, "%lld %ld %s\n",
                           (long long)now.tv_sec * 1000 + now.tv_usec / 1000, ms, path);
        int m = open(marker, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (m >= 0) {
            if (len > 0 && write(m, line, (size_t)len) < 0) {
                /* the marker is advisory */
            }
            close(m);
        }
    }
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay(fd);
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay(fd);
    return real(fd);
}
