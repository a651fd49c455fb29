/*
 * LD_PRELOAD shim that lets the real libcufile run in a sandbox.
 *
 * Containers often lack /proc/modules (libcufile 1.20 then spins forever in
 * cuFileDriverOpen) and /run/udev (cuFileHandleRegister then cannot classify
 * the block device of an ext4 file).  Opens of those paths are redirected:
 *
 *   PYGDS_SHIM_PROC_MODULES  file opened instead of /proc/modules
 *   PYGDS_SHIM_UDEV_RECORD   file opened instead of any /run/udev/data/b*
 *   PYGDS_SHIM_NVIDIA_FS     directory opened instead of /proc/driver/nvidia-fs
 *
 * An unset variable leaves that path alone, so a test can also run the
 * library with /proc/modules missing.  The last one presents "GDS mode" to
 * pygds, which opens that directory to tell whether nvidia-fs is loaded;
 * libcufile opens only the files inside it (version, devcount, ...), which
 * stay absent, so libcufile itself still runs its compatibility mode.
 *
 * Build: cc -shared -fPIC -O2 -Wall -o libpygds_sandbox_shim.so sandbox_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define API __attribute__((visibility("default")))

static const char *redirect(const char *path)
{
    if (path == NULL)
        return path;
    if (strcmp(path, "/proc/modules") == 0) {
        const char *to = getenv("PYGDS_SHIM_PROC_MODULES");
        return to != NULL && *to ? to : path;
    }
    if (strncmp(path, "/run/udev/data/b", 16) == 0) {
        const char *to = getenv("PYGDS_SHIM_UDEV_RECORD");
        return to != NULL && *to ? to : path;
    }
    if (strcmp(path, "/proc/driver/nvidia-fs") == 0) {
        const char *to = getenv("PYGDS_SHIM_NVIDIA_FS");
        return to != NULL && *to ? to : path;
    }
    return path;
}

static void *next(const char *name)
{
    void *fn = dlsym(RTLD_NEXT, name);
    if (fn == NULL) {
        fprintf(stderr, "pygds sandbox shim: %s not found in libc\n", name);
        abort();
    }
    return fn;
}

/* O_CREAT and O_TMPFILE carry a mode argument. */
#define MODE_ARG(flags, mode)                                                 \
    do {                                                                      \
        if ((flags) & (O_CREAT | __O_TMPFILE)) {                              \
            va_list ap;                                                       \
            va_start(ap, flags);                                              \
            mode = va_arg(ap, int);                                           \
            va_end(ap);                                                       \
        }                                                                     \
    } while (0)

API FILE *fopen(const char *path, const char *mode)
{
    static FILE *(*real)(const char *, const char *);
    if (real == NULL)
        real = (FILE * (*)(const char *, const char *)) next("fopen");
    return real(redirect(path), mode);
}

API FILE *fopen64(const char *path, const char *mode)
{
    static FILE *(*real)(const char *, const char *);
    if (real == NULL)
        real = (FILE * (*)(const char *, const char *)) next("fopen64");
    return real(redirect(path), mode);
}

API int open(const char *path, int flags, ...)
{
    static int (*real)(const char *, int, ...);
    int mode = 0;
    MODE_ARG(flags, mode);
    if (real == NULL)
        real = (int (*)(const char *, int, ...))next("open");
    return real(redirect(path), flags, mode);
}

API int open64(const char *path, int flags, ...)
{
    static int (*real)(const char *, int, ...);
    int mode = 0;
    MODE_ARG(flags, mode);
    if (real == NULL)
        real = (int (*)(const char *, int, ...))next("open64");
    return real(redirect(path), flags, mode);
}

API int openat(int dirfd, const char *path, int flags, ...)
{
    static int (*real)(int, const char *, int, ...);
    int mode = 0;
    MODE_ARG(flags, mode);
    if (real == NULL)
        real = (int (*)(int, const char *, int, ...))next("openat");
    return real(dirfd, redirect(path), flags, mode);
}

API int openat64(int dirfd, const char *path, int flags, ...)
{
    static int (*real)(int, const char *, int, ...);
    int mode = 0;
    MODE_ARG(flags, mode);
    if (real == NULL)
        real = (int (*)(int, const char *, int, ...))next("openat64");
    return real(dirfd, redirect(path), flags, mode);
}

/* The _FORTIFY_SOURCE entry points. */
API int __open_2(const char *path, int flags)
{
    static int (*real)(const char *, int);
    if (real == NULL)
        real = (int (*)(const char *, int))next("__open_2");
    return real(redirect(path), flags);
}

API int __open64_2(const char *path, int flags)
{
    static int (*real)(const char *, int);
    if (real == NULL)
        real = (int (*)(const char *, int))next("__open64_2");
    return real(redirect(path), flags);
}

API int __openat_2(int dirfd, const char *path, int flags)
{
    static int (*real)(int, const char *, int);
    if (real == NULL)
        real = (int (*)(int, const char *, int))next("__openat_2");
    return real(dirfd, redirect(path), flags);
}

API int __openat64_2(int dirfd, const char *path, int flags)
{
    static int (*real)(int, const char *, int);
    if (real == NULL)
        real = (int (*)(int, const char *, int))next("__openat64_2");
    return real(dirfd, redirect(path), flags);
}
