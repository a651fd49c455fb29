/*
 * LD_PRELOAD fault injector: makes libc I/O on files under one directory fail with a chosen errno,
 * as a full disk, a quota, a failing device or a permission change would.
 *
 * Files count when opened (open/openat/creat and their 64-bit and _FORTIFY_SOURCE entry points)
 * with a path under PYGDS_FAULT_PREFIX (relative paths are resolved against the current directory
 * or the dirfd, /proc/self/fd/N to the file it names; "." and ".." are not normalised). Their file
 * descriptors are tracked until closed (close, dup2/dup3 onto them); I/O on other descriptors
 * always passes straight through.
 *
 *   PYGDS_FAULT_PREFIX       directory whose files are affected; unset or empty: the shim is inert
 *   PYGDS_FAULT_MATCH        optional: the path must also contain this text (e.g. ".metadata.tmp")
 *   PYGDS_FAULT_OPS          comma list of what fails: write, read, open (any open under the
 *                            prefix), create (opens with O_CREAT), unlink, rename (of a file
 *                            whose old path is under the prefix), fsync (fsync and fdatasync of a
 *                            tracked descriptor); default "write"
 *   PYGDS_FAULT_ERRNO        ENOSPC, EDQUOT, EIO, EACCES, EPERM, EROFS, EFBIG or a number; default EIO
 *   PYGDS_FAULT_SKIP         the first SKIP matching calls succeed; default 0
 *   PYGDS_FAULT_AFTER_BYTES  reads/writes succeed until this many bytes were asked for; the call
 *                            crossing the limit is cut short (as a filling disk does), later ones
 *                            fail; unset: no byte limit
 *   PYGDS_FAULT_TIMES        inject at most this many faults, then let everything pass (the fault
 *                            is lifted); default 0 = no limit
 *   PYGDS_FAULT_ACTION       what a fault does: "fail" (default: the call fails with the errno),
 *                            "eof" (a read or write returns 0, as at the end of a file that
 *                            shrank; other calls fail), "crash-after" (unlink, rename and fsync
 *                            only: the call runs, then the process is killed with SIGKILL, as a
 *                            crash right after it would)
 *
 * Intercepted: write, pwrite, pwrite64, writev, pwritev, pwritev64, pwritev2, pwritev64v2 and the
 * read counterparts, unlink, unlinkat, rename, renameat, renameat2, fsync, fdatasync. A process may
 * change the variables and call pygds_fault_reload() (through ctypes.CDLL(None)) to re-arm it;
 * pygds_fault_injected() counts the faults since then, pygds_fault_calls() the matching calls
 * (faulted or skipped).
 *
 * Build: cc -shared -fPIC -O2 -Wall -o libpygds_fault_shim.so fault_shim.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))
#define MAX_TRACKED_FD 65536
#define MAX_IOV 1024

enum { OP_WRITE = 1, OP_READ = 2, OP_OPEN = 4, OP_CREATE = 8, OP_UNLINK = 16, OP_RENAME = 32,
       OP_FSYNC = 64 };
enum { ACTION_FAIL, ACTION_EOF, ACTION_CRASH_AFTER };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static volatile unsigned char tracked[MAX_TRACKED_FD];

static struct {
    char prefix[PATH_MAX];
    size_t prefix_len;
    char match[256];
    int ops;
    int err;
    long long skip;
    long long after_bytes; /* < 0: no limit */
    long long times;       /* 0: no limit */
    int action;
    /* counters since the last (re)load */
    long long calls;
    long long bytes;
    long long injected;
} cfg;

static void *next(const char *name)
{
    void *fn = dlsym(RTLD_NEXT, name);
    if (fn == NULL) {
        fprintf(stderr, "pygds fault shim: %s not found in libc\n", name);
        abort();
    }
    return fn;
}

static const struct { const char *name; int value; } ERRNOS[] = {
    {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EIO", EIO},     {"EACCES", EACCES},
    {"EPERM", EPERM},   {"EROFS", EROFS},   {"EFBIG", EFBIG}, {"ENOMEM", ENOMEM},
};

static long long env_ll(const char *name, long long fallback)
{
    const char *text = getenv(name);
    return text != NULL && *text ? strtoll(text, NULL, 10) : fallback;
}

/* (Re)read the variables and zero the counters; -1 when PYGDS_FAULT_ERRNO is not understood. */
static int load(void)
{
    int rc = 0;
    const char *text;
    memset(&cfg, 0, sizeof cfg);
    text = getenv("PYGDS_FAULT_PREFIX");
    if (text != NULL && *text && strlen(text) < sizeof cfg.prefix) {
        strcpy(cfg.prefix, text);
        cfg.prefix_len = strlen(text);
        while (cfg.prefix_len > 1 && cfg.prefix[cfg.prefix_len - 1] == '/')
            cfg.prefix[--cfg.prefix_len] = '\0';
    }
    text = getenv("PYGDS_FAULT_MATCH");
    if (text != NULL && strlen(text) < sizeof cfg.match)
        strcpy(cfg.match, text);
    text = getenv("PYGDS_FAULT_OPS");
    if (text == NULL || !*text)
        text = "write";
    cfg.ops = (strstr(text, "write") ? OP_WRITE : 0) | (strstr(text, "read") ? OP_READ : 0) |
              (strstr(text, "open") ? OP_OPEN : 0) | (strstr(text, "create") ? OP_CREATE : 0) |
              (strstr(text, "unlink") ? OP_UNLINK : 0) | (strstr(text, "rename") ? OP_RENAME : 0) |
              (strstr(text, "fsync") ? OP_FSYNC : 0);
    text = getenv("PYGDS_FAULT_ACTION");
    cfg.action = ACTION_FAIL;
    if (text != NULL && strcmp(text, "eof") == 0)
        cfg.action = ACTION_EOF;
    else if (text != NULL && strcmp(text, "crash-after") == 0)
        cfg.action = ACTION_CRASH_AFTER;
    else if (text != NULL && *text && strcmp(text, "fail") != 0)
        fprintf(stderr, "pygds fault shim: unknown PYGDS_FAULT_ACTION=%s, using fail\n", text);
    cfg.err = EIO;
    text = getenv("PYGDS_FAULT_ERRNO");
    if (text != NULL && *text) {
        char *end;
        long number = strtol(text, &end, 10);
        if (*end == '\0' && number > 0) {
            cfg.err = (int)number;
        } else {
            size_t i;
            rc = -1;
            for (i = 0; i < sizeof ERRNOS / sizeof ERRNOS[0]; i++)
                if (strcmp(text, ERRNOS[i].name) == 0) {
                    cfg.err = ERRNOS[i].value;
                    rc = 0;
                }
            if (rc != 0)
                fprintf(stderr, "pygds fault shim: unknown PYGDS_FAULT_ERRNO=%s, using EIO\n", text);
        }
    }
    cfg.skip = env_ll("PYGDS_FAULT_SKIP", 0);
    cfg.after_bytes = env_ll("PYGDS_FAULT_AFTER_BYTES", -1);
    cfg.times = env_ll("PYGDS_FAULT_TIMES", 0);
    return rc;
}

static void load_once(void) { load(); }

static void init(void) { pthread_once(&once, load_once); }

#define CRASH_AFTER (-2)

/*
 * Decide one call of kind `op` asking for `want` bytes: returns how many bytes may go through
 * (`want`, or fewer for the call crossing the byte limit; 0 for a read or write faulted with
 * ACTION_EOF), -1 to fail it with cfg.err, or CRASH_AFTER to run it and then die.
 */
static long long decide(int op, long long want)
{
    long long allowed = want;
    pthread_mutex_lock(&lock);
    if (!(cfg.ops & op) || (cfg.times > 0 && cfg.injected >= cfg.times)) {
        allowed = want;
    } else if (++cfg.calls <= cfg.skip) {
        cfg.bytes += want;
    } else if (cfg.after_bytes >= 0 && (op & (OP_READ | OP_WRITE))) {
        if (cfg.bytes >= cfg.after_bytes || want == 0) {
            allowed = cfg.bytes >= cfg.after_bytes ? -1 : 0;
        } else if (cfg.bytes + want > cfg.after_bytes) {
            allowed = cfg.after_bytes - cfg.bytes;
        }
        if (allowed > 0)
            cfg.bytes += allowed;
    } else {
        allowed = -1;
    }
    if (allowed < 0) {
        cfg.injected++;
        if (cfg.action == ACTION_EOF && (op & (OP_READ | OP_WRITE)))
            allowed = 0;
        else if (cfg.action == ACTION_CRASH_AFTER && (op & (OP_UNLINK | OP_RENAME | OP_FSYNC)))
            allowed = CRASH_AFTER;
    }
    pthread_mutex_unlock(&lock);
    return allowed;
}

/* Carry out `decide`'s verdict on a call without a byte count: fail it, or run `call(args)`
 * (and die after it under CRASH_AFTER). */
static int run_or_fault(long long verdict, int (*call)(void *), void *args)
{
    int rc;
    if (verdict == -1) {
        errno = cfg.err;
        return -1;
    }
    rc = call(args);
    if (verdict == CRASH_AFTER)
        kill(getpid(), SIGKILL);
    return rc;
}

static int is_tracked(int fd)
{
    return fd >= 0 && fd < MAX_TRACKED_FD && tracked[fd];
}

static void set_tracked(int fd, unsigned char on)
{
    if (fd >= 0 && fd < MAX_TRACKED_FD)
        tracked[fd] = on;
}

/* True when `path` (relative to `dirfd`) lies under the prefix and holds the match text. */
static int affected(int dirfd, const char *path)
{
    char full[PATH_MAX * 2];
    init();
    if (cfg.prefix_len == 0 || path == NULL)
        return 0;
    if (strncmp(path, "/proc/self/fd/", 14) == 0) { /* a reopened descriptor: the file it names */
        ssize_t n = readlink(path, full, sizeof full - 1);
        if (n <= 0)
            return 0;
        full[n] = '\0';
    } else if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (getcwd(base, sizeof base) == NULL)
                return 0;
        } else {
            char link[64];
            ssize_t n;
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            n = readlink(link, base, sizeof base - 1);
            if (n <= 0)
                return 0;
            base[n] = '\0';
        }
        snprintf(full, sizeof full, "%s/%s", base, path);
    }
    if (strncmp(full, cfg.prefix, cfg.prefix_len) != 0)
        return 0;
    if (full[cfg.prefix_len] != '/' && full[cfg.prefix_len] != '\0' && strcmp(cfg.prefix, "/") != 0)
        return 0;
    return cfg.match[0] == '\0' || strstr(full, cfg.match) != NULL;
}

/* Common open path: maybe fail, else open for real and track the descriptor. */
static int after_open(int fd, int hit)
{
    if (fd >= 0)
        set_tracked(fd, (unsigned char)hit);
    return fd;
}

static int open_fault(int dirfd, const char *path, int flags)
{
    int hit = affected(dirfd, path);
    if (hit) {
        int op = OP_OPEN | ((flags & O_CREAT) ? OP_CREATE : 0);
        if ((cfg.ops & op) && decide(cfg.ops & op, 0) < 0) {
            errno = cfg.err;
            return -1;
        }
    }
    return hit;
}

#define MODE_ARG(flags, mode)                                                 \
    do {                                                                      \
        if ((flags) & (O_CREAT | __O_TMPFILE)) {                              \
            va_list ap;                                                       \
            va_start(ap, flags);                                              \
            mode = va_arg(ap, int);                                           \
            va_end(ap);                                                       \
        }                                                                     \
    } while (0)

#define DEFINE_OPEN(name)                                                     \
    API int name(const char *path, int flags, ...)                            \
    {                                                                         \
        static int (*real)(const char *, int, ...);                           \
        int mode = 0, hit;                                                    \
        MODE_ARG(flags, mode);                                                \
        if (real == NULL)                                                     \
            real = (int (*)(const char *, int, ...))next(#name);              \
        hit = open_fault(AT_FDCWD, path, flags);                              \
        if (hit < 0)                                                          \
            return -1;                                                        \
        return after_open(real(path, flags, mode), hit);                      \
    }

#define DEFINE_OPENAT(name)                                                   \
    API int name(int dirfd, const char *path, int flags, ...)                 \
    {                                                                         \
        static int (*real)(int, const char *, int, ...);                      \
        int mode = 0, hit;                                                    \
        MODE_ARG(flags, mode);                                                \
        if (real == NULL)                                                     \
            real = (int (*)(int, const char *, int, ...))next(#name);         \
        hit = open_fault(dirfd, path, flags);                                 \
        if (hit < 0)                                                          \
            return -1;                                                        \
        return after_open(real(dirfd, path, flags, mode), hit);               \
    }

#define DEFINE_OPEN_2(name)                                                   \
    API int name(const char *path, int flags)                                 \
    {                                                                         \
        static int (*real)(const char *, int);                                \
        int hit;                                                              \
        if (real == NULL)                                                     \
            real = (int (*)(const char *, int))next(#name);                   \
        hit = open_fault(AT_FDCWD, path, flags);                              \
        if (hit < 0)                                                          \
            return -1;                                                        \
        return after_open(real(path, flags), hit);                            \
    }

#define DEFINE_OPENAT_2(name)                                                 \
    API int name(int dirfd, const char *path, int flags)                      \
    {                                                                         \
        static int (*real)(int, const char *, int);                           \
        int hit;                                                              \
        if (real == NULL)                                                     \
            real = (int (*)(int, const char *, int))next(#name);              \
        hit = open_fault(dirfd, path, flags);                                 \
        if (hit < 0)                                                          \
            return -1;                                                        \
        return after_open(real(dirfd, path, flags), hit);                     \
    }

#define DEFINE_CREAT(name)                                                    \
    API int name(const char *path, mode_t mode)                               \
    {                                                                         \
        static int (*real)(const char *, mode_t);                             \
        int hit;                                                              \
        if (real == NULL)                                                     \
            real = (int (*)(const char *, mode_t))next(#name);                \
        hit = open_fault(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC);       \
        if (hit < 0)                                                          \
            return -1;                                                        \
        return after_open(real(path, mode), hit);                             \
    }

DEFINE_OPEN(open)
DEFINE_OPEN(open64)
DEFINE_OPENAT(openat)
DEFINE_OPENAT(openat64)
DEFINE_OPEN_2(__open_2)
DEFINE_OPEN_2(__open64_2)
DEFINE_OPENAT_2(__openat_2)
DEFINE_OPENAT_2(__openat64_2)
DEFINE_CREAT(creat)
DEFINE_CREAT(creat64)

API int close(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))next("close");
    set_tracked(fd, 0);
    return real(fd);
}

API int dup2(int oldfd, int newfd)
{
    static int (*real)(int, int);
    int fd;
    if (real == NULL)
        real = (int (*)(int, int))next("dup2");
    fd = real(oldfd, newfd);
    if (fd >= 0 && fd != oldfd)
        set_tracked(fd, 0);
    return fd;
}

API int dup3(int oldfd, int newfd, int flags)
{
    static int (*real)(int, int, int);
    int fd;
    if (real == NULL)
        real = (int (*)(int, int, int))next("dup3");
    fd = real(oldfd, newfd, flags);
    if (fd >= 0)
        set_tracked(fd, 0);
    return fd;
}

/* -- plain reads and writes ----------------------------------------------------------------- */

/* Bytes allowed for a call on `fd` (`want` when it is not tracked); -1 with errno set to fail. */
static long long gate(int fd, int op, size_t want)
{
    long long allowed;
    if (!is_tracked(fd))
        return (long long)want;
    allowed = decide(op, (long long)want);
    if (allowed < 0)
        errno = cfg.err;
    return allowed;
}

#define DEFINE_RW(name, op, buftype)                                          \
    API ssize_t name(int fd, buftype buf, size_t count)                       \
    {                                                                         \
        static ssize_t (*real)(int, buftype, size_t);                         \
        long long n;                                                          \
        if (real == NULL)                                                     \
            real = (ssize_t(*)(int, buftype, size_t))next(#name);             \
        n = gate(fd, op, count);                                              \
        if (n < 0)                                                            \
            return -1;                                                        \
        return real(fd, buf, (size_t)n);                                      \
    }

#define DEFINE_PRW(name, op, buftype, offtype)                                \
    API ssize_t name(int fd, buftype buf, size_t count, offtype offset)       \
    {                                                                         \
        static ssize_t (*real)(int, buftype, size_t, offtype);                \
        long long n;                                                          \
        if (real == NULL)                                                     \
            real = (ssize_t(*)(int, buftype, size_t, offtype))next(#name);    \
        n = gate(fd, op, count);                                              \
        if (n < 0)                                                            \
            return -1;                                                        \
        return real(fd, buf, (size_t)n, offset);                              \
    }

DEFINE_RW(write, OP_WRITE, const void *)
DEFINE_RW(read, OP_READ, void *)
DEFINE_PRW(pwrite, OP_WRITE, const void *, off_t)
DEFINE_PRW(pwrite64, OP_WRITE, const void *, off64_t)
DEFINE_PRW(pread, OP_READ, void *, off_t)
DEFINE_PRW(pread64, OP_READ, void *, off64_t)

/* -- vectored reads and writes -------------------------------------------------------------- */

static size_t iov_total(const struct iovec *iov, int count)
{
    size_t total = 0;
    int i;
    for (i = 0; i < count; i++)
        total += iov[i].iov_len;
    return total;
}

/* Copy `iov` into `out` cut to `limit` bytes; returns the new count. */
static int iov_cut(const struct iovec *iov, int count, size_t limit, struct iovec *out)
{
    int i, n = 0;
    for (i = 0; i < count && i < MAX_IOV && limit > 0; i++) {
        out[n] = iov[i];
        if (out[n].iov_len > limit)
            out[n].iov_len = limit;
        limit -= out[n].iov_len;
        n++;
    }
    return n;
}

/* Gate a vectored call: NULL with errno set to fail, else the iovec to pass (maybe `cut`). */
static const struct iovec *gate_iov(int fd, int op, const struct iovec *iov, int *count,
                                    struct iovec *cut)
{
    size_t want;
    long long allowed;
    if (!is_tracked(fd) || *count < 0)
        return iov;
    want = iov_total(iov, *count);
    allowed = gate(fd, op, want);
    if (allowed < 0)
        return NULL;
    if ((size_t)allowed < want) {
        *count = iov_cut(iov, *count, (size_t)allowed, cut);
        return cut;
    }
    return iov;
}

#define DEFINE_RWV(name, op)                                                  \
    API ssize_t name(int fd, const struct iovec *iov, int count)              \
    {                                                                         \
        static ssize_t (*real)(int, const struct iovec *, int);               \
        struct iovec cut[MAX_IOV];                                            \
        const struct iovec *use;                                              \
        if (real == NULL)                                                     \
            real = (ssize_t(*)(int, const struct iovec *, int))next(#name);   \
        use = gate_iov(fd, op, iov, &count, cut);                             \
        if (use == NULL)                                                      \
            return -1;                                                        \
        return real(fd, use, count);                                          \
    }

#define DEFINE_PRWV(name, op, offtype)                                        \
    API ssize_t name(int fd, const struct iovec *iov, int count, offtype off) \
    {                                                                         \
        static ssize_t (*real)(int, const struct iovec *, int, offtype);      \
        struct iovec cut[MAX_IOV];                                            \
        const struct iovec *use;                                              \
        if (real == NULL)                                                     \
            real = (ssize_t(*)(int, const struct iovec *, int, offtype))next(#name); \
        use = gate_iov(fd, op, iov, &count, cut);                             \
        if (use == NULL)                                                      \
            return -1;                                                        \
        return real(fd, use, count, off);                                     \
    }

#define DEFINE_PRWV2(name, op, offtype)                                       \
    API ssize_t name(int fd, const struct iovec *iov, int count, offtype off, int flags) \
    {                                                                         \
        static ssize_t (*real)(int, const struct iovec *, int, offtype, int); \
        struct iovec cut[MAX_IOV];                                            \
        const struct iovec *use;                                              \
        if (real == NULL)                                                     \
            real = (ssize_t(*)(int, const struct iovec *, int, offtype, int))next(#name); \
        use = gate_iov(fd, op, iov, &count, cut);                             \
        if (use == NULL)                                                      \
            return -1;                                                        \
        return real(fd, use, count, off, flags);                              \
    }

DEFINE_RWV(writev, OP_WRITE)
DEFINE_RWV(readv, OP_READ)
DEFINE_PRWV(pwritev, OP_WRITE, off_t)
DEFINE_PRWV(pwritev64, OP_WRITE, off64_t)
DEFINE_PRWV(preadv, OP_READ, off_t)
DEFINE_PRWV(preadv64, OP_READ, off64_t)
DEFINE_PRWV2(pwritev2, OP_WRITE, off_t)
DEFINE_PRWV2(pwritev64v2, OP_WRITE, off64_t)
DEFINE_PRWV2(preadv2, OP_READ, off_t)
DEFINE_PRWV2(preadv64v2, OP_READ, off64_t)

/* -- unlink, rename, fsync ------------------------------------------------------------------ */

/* The verdict for a path operation of kind `op` (0 when it passes untouched). */
static long long path_verdict(int op, int dirfd, const char *path)
{
    if (!affected(dirfd, path) || !(cfg.ops & op))
        return 0;
    return decide(op, 0);
}

struct unlinkat_args { int (*real)(int, const char *, int); int dirfd; const char *path; int flags; };
static int call_unlinkat(void *p)
{
    struct unlinkat_args *a = p;
    return a->real(a->dirfd, a->path, a->flags);
}

struct unlink_args { int (*real)(const char *); const char *path; };
static int call_unlink(void *p)
{
    struct unlink_args *a = p;
    return a->real(a->path);
}

API int unlink(const char *path)
{
    static int (*real)(const char *);
    struct unlink_args a;
    if (real == NULL)
        real = (int (*)(const char *))next("unlink");
    a.real = real;
    a.path = path;
    return run_or_fault(path_verdict(OP_UNLINK, AT_FDCWD, path), call_unlink, &a);
}

API int unlinkat(int dirfd, const char *path, int flags)
{
    static int (*real)(int, const char *, int);
    struct unlinkat_args a;
    if (real == NULL)
        real = (int (*)(int, const char *, int))next("unlinkat");
    a.real = real;
    a.dirfd = dirfd;
    a.path = path;
    a.flags = flags;
    return run_or_fault(path_verdict(OP_UNLINK, dirfd, path), call_unlinkat, &a);
}

struct rename_args {
    const char *name; /* the libc function: rename, renameat or renameat2 */
    int olddirfd, newdirfd;
    const char *oldpath, *newpath;
    unsigned int flags;
};
static int call_rename(void *p)
{
    static int (*real_rename)(const char *, const char *);
    static int (*real_renameat)(int, const char *, int, const char *);
    static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
    struct rename_args *a = p;
    if (strcmp(a->name, "rename") == 0) {
        if (real_rename == NULL)
            real_rename = (int (*)(const char *, const char *))next("rename");
        return real_rename(a->oldpath, a->newpath);
    }
    if (strcmp(a->name, "renameat") == 0) {
        if (real_renameat == NULL)
            real_renameat = (int (*)(int, const char *, int, const char *))next("renameat");
        return real_renameat(a->olddirfd, a->oldpath, a->newdirfd, a->newpath);
    }
    if (real_renameat2 == NULL)
        real_renameat2 = (int (*)(int, const char *, int, const char *, unsigned int))next("renameat2");
    return real_renameat2(a->olddirfd, a->oldpath, a->newdirfd, a->newpath, a->flags);
}

static int rename_common(const char *name, int olddirfd, const char *oldpath, int newdirfd,
                         const char *newpath, unsigned int flags)
{
    struct rename_args a = {name, olddirfd, newdirfd, oldpath, newpath, flags};
    return run_or_fault(path_verdict(OP_RENAME, olddirfd, oldpath), call_rename, &a);
}

API int rename(const char *oldpath, const char *newpath)
{
    return rename_common("rename", AT_FDCWD, oldpath, AT_FDCWD, newpath, 0);
}

API int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    return rename_common("renameat", olddirfd, oldpath, newdirfd, newpath, 0);
}

API int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)
{
    return rename_common("renameat2", olddirfd, oldpath, newdirfd, newpath, flags);
}

struct fsync_args { int (*real)(int); int fd; };
static int call_fsync(void *p)
{
    struct fsync_args *a = p;
    return a->real(a->fd);
}

#define DEFINE_FSYNC(name)                                                    \
    API int name(int fd)                                                      \
    {                                                                         \
        static int (*real)(int);                                              \
        struct fsync_args a;                                                  \
        long long verdict = 0;                                                \
        if (real == NULL)                                                     \
            real = (int (*)(int))next(#name);                                 \
        init();                                                               \
        if (is_tracked(fd) && (cfg.ops & OP_FSYNC))                           \
            verdict = decide(OP_FSYNC, 0);                                    \
        a.real = real;                                                        \
        a.fd = fd;                                                            \
        return run_or_fault(verdict, call_fsync, &a);                         \
    }

DEFINE_FSYNC(fsync)
DEFINE_FSYNC(fdatasync)

/* -- control from the process under test (ctypes.CDLL(None)) ------------------------------- */

API int pygds_fault_reload(void)
{
    int rc;
    init();
    pthread_mutex_lock(&lock);
    rc = load();
    pthread_mutex_unlock(&lock);
    return rc;
}

API long long pygds_fault_calls(void)
{
    long long n;
    init();
    pthread_mutex_lock(&lock);
    n = cfg.calls;
    pthread_mutex_unlock(&lock);
    return n;
}

API long long pygds_fault_injected(void)
{
    long long n;
    init();
    pthread_mutex_lock(&lock);
    n = cfg.injected;
    pthread_mutex_unlock(&lock);
    return n;
}
