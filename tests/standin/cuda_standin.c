/*
 * A stand-in libcuda.so.1 for tests on machines without a GPU.
 *
 * The real libcufile (compatibility mode) and cuda-python run against it:
 * "device memory" is host memory remembered in a table, so copies are
 * memcpy.  Device allocations are mapped twice from one memfd: the address
 * handed out is PROT_NONE, like GPU memory it faults when the host touches
 * it directly, and copies go through a private read-write alias.  A caller
 * that treats a device pointer as host memory (for example a silent POSIX
 * fallback) therefore fails here as it would on a GPU.
 *
 * Environment:
 *   PYGDS_STANDIN_DEVICES  number of devices (default 1, 0 allowed: cuInit
 *                          then fails with CUDA_ERROR_NO_DEVICE)
 *   PYGDS_STANDIN_TRACE    when set to 1, every driver call is logged to stderr
 *
 * Build: cc -shared -fPIC -O2 -Wall -fvisibility=hidden -o libcuda.so.1 \
 *        cuda_standin.c -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long cuuint64_t;
typedef unsigned int cuuint32_t;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef void (*CUhostFn)(void *userData);
typedef void (*CUstreamCallback)(CUstream hStream, CUresult status, void *userData);
typedef struct { char bytes[16]; } CUuuid;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_PEER_ACCESS_UNSUPPORTED = 217,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712,
    CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED = 713,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

enum { CU_MEMORYTYPE_HOST = 1, CU_MEMORYTYPE_DEVICE = 2 };

enum {
    CU_POINTER_ATTRIBUTE_CONTEXT = 1,
    CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2,
    CU_POINTER_ATTRIBUTE_DEVICE_POINTER = 3,
    CU_POINTER_ATTRIBUTE_HOST_POINTER = 4,
    CU_POINTER_ATTRIBUTE_P2P_TOKENS = 5,
    CU_POINTER_ATTRIBUTE_SYNC_MEMOPS = 6,
    CU_POINTER_ATTRIBUTE_BUFFER_ID = 7,
    CU_POINTER_ATTRIBUTE_IS_MANAGED = 8,
    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9,
    CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE = 10,
    CU_POINTER_ATTRIBUTE_RANGE_START_ADDR = 11,
    CU_POINTER_ATTRIBUTE_RANGE_SIZE = 12,
    CU_POINTER_ATTRIBUTE_MAPPED = 13,
    CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES = 14,
    CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE = 15,
    CU_POINTER_ATTRIBUTE_ACCESS_FLAGS = 16,
    CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE = 17,
    CU_POINTER_ATTRIBUTE_MAPPING_SIZE = 18,
    CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR = 19,
    CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID = 20,
    CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE = 21,
};

enum {
    CU_GET_PROC_ADDRESS_SUCCESS = 0,
    CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1,
    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT = 2,
};

#define STANDIN_DRIVER_VERSION 13000
#define STANDIN_MAX_DEVICES 16
#define STANDIN_TOTAL_MEM (16ULL << 30)
#define STANDIN_CTX_STACK 256
#define EVENT_DISABLE_TIMING 0x2u

/* ------------------------------------------------------------------ state */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_initialized;
static int g_device_count = -1; /* read from the environment on first use */
static int g_trace = -1;
static unsigned long long g_next_id = 1;

static void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void trace(const char *fmt, ...)
{
    if (g_trace < 0) {
        const char *v = getenv("PYGDS_STANDIN_TRACE");
        g_trace = v != NULL && strcmp(v, "1") == 0;
    }
    if (!g_trace)
        return;
    char line[512];
    int n = snprintf(line, sizeof line, "[cuda-standin %ld] ", (long)syscall(SYS_gettid));
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n); /* one line per write */
    (void)w;
}

static int device_count(void)
{
    if (g_device_count < 0) {
        const char *v = getenv("PYGDS_STANDIN_DEVICES");
        long n = v != NULL && *v ? strtol(v, NULL, 10) : 1;
        if (n < 0)
            n = 0;
        if (n > STANDIN_MAX_DEVICES)
            n = STANDIN_MAX_DEVICES;
        g_device_count = (int)n;
    }
    return g_device_count;
}

static unsigned long long next_id(void)
{
    return __atomic_fetch_add(&g_next_id, 1, __ATOMIC_RELAXED);
}

#define REQUIRE_INIT()                                                        \
    do {                                                                      \
        if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE))               \
            return CUDA_ERROR_NOT_INITIALIZED;                                \
    } while (0)

static int valid_device(CUdevice dev) { return dev >= 0 && dev < device_count(); }

/* --------------------------------------------------------------- contexts */

#define CTX_MAGIC 0x43545853u
struct CUctx_st {
    unsigned magic;
    CUdevice device;
    int primary;
    int refs;           /* primary contexts: retain count */
    unsigned flags;
    unsigned long long id;
    struct CUctx_st *next; /* created (non-primary) contexts, under g_lock */
};

static struct CUctx_st g_primary[STANDIN_MAX_DEVICES];
static struct CUctx_st *g_created;

/* Each thread's context stack starts as [primary context of device 0]:
 * real applications have made the primary context current, and libcufile
 * asserts on a NULL current context in cuFileBufRegister. */
static __thread CUcontext tl_stack[STANDIN_CTX_STACK];
static __thread int tl_depth;
static __thread int tl_touched;

static void ctx_stack_touch(void)
{
    if (!tl_touched) {
        tl_touched = 1;
        tl_stack[0] = &g_primary[0];
        tl_depth = 1;
    }
}

static CUcontext current_ctx(void)
{
    ctx_stack_touch();
    return tl_depth > 0 ? tl_stack[tl_depth - 1] : NULL;
}

/* caller holds g_lock */
static int ctx_valid_locked(CUcontext c)
{
    if (c == NULL)
        return 0;
    for (int i = 0; i < device_count(); i++)
        if (c == &g_primary[i])
            return 1;
    for (struct CUctx_st *p = g_created; p != NULL; p = p->next)
        if (p == c)
            return 1;
    return 0;
}

static int ctx_valid(CUcontext c)
{
    pthread_mutex_lock(&g_lock);
    int ok = ctx_valid_locked(c);
    pthread_mutex_unlock(&g_lock);
    return ok;
}

static CUdevice current_device(void)
{
    CUcontext c = current_ctx();
    return c != NULL ? c->device : -1;
}

/* ------------------------------------------------------------ memory table */

enum kind { K_DEVICE = 1, K_HOST_ALLOC, K_HOST_REGISTERED, K_MANAGED };

struct alloc {
    uintptr_t base;   /* address handed out */
    size_t size;      /* bytes asked for */
    size_t map_size;  /* bytes mapped (page-rounded) */
    char *alias;      /* where the bytes can be touched by the host */
    int kind;
    CUdevice device;
    CUcontext ctx;
    unsigned flags;
    int sync_memops;
    unsigned long long id;
};

static struct alloc *g_table; /* sorted by base, under g_lock */
static size_t g_count, g_cap;
static size_t g_device_bytes[STANDIN_MAX_DEVICES];

/* index of the entry containing p, or -1; caller holds g_lock */
static long table_find_locked(uintptr_t p)
{
    size_t lo = 0, hi = g_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_table[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    struct alloc *a = &g_table[lo - 1];
    return p < a->base + a->size ? (long)(lo - 1) : -1;
}

/* 1 when [base, base+size) overlaps an entry; caller holds g_lock */
static int table_overlaps_locked(uintptr_t base, size_t size)
{
    for (size_t i = 0; i < g_count; i++)
        if (g_table[i].base < base + size && base < g_table[i].base + g_table[i].size)
            return 1;
    return 0;
}

static int table_insert_locked(const struct alloc *a)
{
    if (g_count == g_cap) {
        size_t cap = g_cap ? g_cap * 2 : 64;
        struct alloc *t = realloc(g_table, cap * sizeof *t);
        if (t == NULL)
            return -1;
        g_table = t;
        g_cap = cap;
    }
    size_t i = g_count;
    while (i > 0 && g_table[i - 1].base > a->base) {
        g_table[i] = g_table[i - 1];
        i--;
    }
    g_table[i] = *a;
    g_count++;
    return 0;
}

static void table_remove_locked(size_t i)
{
    memmove(&g_table[i], &g_table[i + 1], (g_count - i - 1) * sizeof *g_table);
    g_count--;
    if (g_count == 0) {
        free(g_table);
        g_table = NULL;
        g_cap = 0;
    }
}

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

/* Host address for [p, p+n): the alias of a known allocation, or p itself
 * (pageable host memory) unless need_known. */
static CUresult host_span(uintptr_t p, size_t n, int need_known, char **out)
{
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked(p);
    if (i < 0) {
        pthread_mutex_unlock(&g_lock);
        if (need_known)
            return CUDA_ERROR_INVALID_VALUE;
        *out = (char *)p;
        return CUDA_SUCCESS;
    }
    struct alloc *a = &g_table[i];
    if (n > a->base + a->size - p) {
        pthread_mutex_unlock(&g_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    *out = a->alias + (p - a->base);
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

static CUresult copy_bytes(uintptr_t dst, int dst_known, uintptr_t src, int src_known,
                           size_t n)
{
    if (n == 0)
        return CUDA_SUCCESS;
    char *d, *s;
    CUresult r = host_span(dst, n, dst_known, &d);
    if (r == CUDA_SUCCESS)
        r = host_span(src, n, src_known, &s);
    if (r == CUDA_SUCCESS)
        memmove(d, s, n);
    return r;
}

static CUresult device_alloc(CUdeviceptr *dptr, size_t size, int kind)
{
    REQUIRE_INIT();
    if (dptr == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = current_ctx();
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    size_t map_size = page_round(size);
    struct alloc a = {.size = size, .map_size = map_size, .kind = kind,
                      .device = ctx->device, .ctx = ctx, .id = next_id()};
    pthread_mutex_lock(&g_lock);
    int over = g_device_bytes[ctx->device] + map_size > STANDIN_TOTAL_MEM;
    pthread_mutex_unlock(&g_lock);
    if (over)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (kind == K_DEVICE) {
        int fd = memfd_create("pygds-standin-device", MFD_CLOEXEC);
        if (fd < 0)
            return CUDA_ERROR_OUT_OF_MEMORY;
        void *hidden = MAP_FAILED, *alias = MAP_FAILED;
        if (ftruncate(fd, (off_t)map_size) == 0) {
            hidden = mmap(NULL, map_size, PROT_NONE, MAP_SHARED, fd, 0);
            alias = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        }
        close(fd);
        if (hidden == MAP_FAILED || alias == MAP_FAILED) {
            if (hidden != MAP_FAILED)
                munmap(hidden, map_size);
            if (alias != MAP_FAILED)
                munmap(alias, map_size);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        a.base = (uintptr_t)hidden;
        a.alias = alias;
    } else { /* managed memory is reachable from the host */
        void *m = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return CUDA_ERROR_OUT_OF_MEMORY;
        a.base = (uintptr_t)m;
        a.alias = m;
    }
    pthread_mutex_lock(&g_lock);
    int bad = table_insert_locked(&a);
    if (!bad)
        g_device_bytes[a.device] += map_size;
    pthread_mutex_unlock(&g_lock);
    if (bad) {
        munmap((void *)a.base, map_size);
        if (a.alias != (char *)a.base)
            munmap(a.alias, map_size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *dptr = a.base;
    trace("alloc kind=%d dptr=%#llx size=%zu", kind, (unsigned long long)a.base, size);
    return CUDA_SUCCESS;
}

/* Remove the entry whose base is p and whose kind is in kinds; returns the
 * removed entry through out. */
static CUresult table_take(uintptr_t p, const int *kinds, int nkinds, struct alloc *out)
{
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked(p);
    if (i < 0 || g_table[i].base != p) {
        pthread_mutex_unlock(&g_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    int ok = 0;
    for (int k = 0; k < nkinds; k++)
        ok |= g_table[i].kind == kinds[k];
    if (!ok) {
        pthread_mutex_unlock(&g_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    *out = g_table[i];
    if (out->kind == K_DEVICE || out->kind == K_MANAGED)
        g_device_bytes[out->device] -= out->map_size;
    table_remove_locked((size_t)i);
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

static CUresult host_alloc(void **pp, size_t size, unsigned flags)
{
    REQUIRE_INIT();
    if (pp == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = current_ctx();
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    size_t map_size = page_round(size);
    void *m = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct alloc a = {.base = (uintptr_t)m, .size = size, .map_size = map_size,
                      .alias = m, .kind = K_HOST_ALLOC, .device = ctx->device,
                      .ctx = ctx, .flags = flags, .id = next_id()};
    pthread_mutex_lock(&g_lock);
    int bad = table_insert_locked(&a);
    pthread_mutex_unlock(&g_lock);
    if (bad) {
        munmap(m, map_size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pp = m;
    trace("host alloc %p size=%zu flags=%#x", m, size, flags);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------ init and versions */

API CUresult cuInit(unsigned int flags)
{
    trace("cuInit(%u)", flags);
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (device_count() == 0)
        return CUDA_ERROR_NO_DEVICE;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < device_count(); i++) {
        if (g_primary[i].magic != CTX_MAGIC) {
            g_primary[i].magic = CTX_MAGIC;
            g_primary[i].device = i;
            g_primary[i].primary = 1;
            g_primary[i].id = next_id();
        }
    }
    pthread_mutex_unlock(&g_lock);
    __atomic_store_n(&g_initialized, 1, __ATOMIC_RELEASE);
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int *version)
{
    trace("cuDriverGetVersion");
    if (version == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *version = STANDIN_DRIVER_VERSION;
    return CUDA_SUCCESS;
}

/* A few export tables of the real driver are private; callers must cope
 * with their absence, as libcufile does. */
API CUresult cuGetExportTable(const void **table, const CUuuid *id)
{
    trace("cuGetExportTable");
    if (table != NULL)
        *table = NULL;
    (void)id;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---------------------------------------------------------------- errors */

static const struct { CUresult code; const char *name, *text; } g_errors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {217, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED", "peer access is not supported between these two devices"},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {600, "CUDA_ERROR_NOT_READY", "device not ready"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"},
    {713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult error_lookup(CUresult error, const char **out, int want_name)
{
    if (out == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++) {
        if (g_errors[i].code == error) {
            *out = want_name ? g_errors[i].name : g_errors[i].text;
            return CUDA_SUCCESS;
        }
    }
    *out = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuGetErrorName(CUresult error, const char **pStr) { return error_lookup(error, pStr, 1); }
API CUresult cuGetErrorString(CUresult error, const char **pStr) { return error_lookup(error, pStr, 0); }

/* ---------------------------------------------------------------- devices */

API CUresult cuDeviceGetCount(int *count)
{
    trace("cuDeviceGetCount");
    REQUIRE_INIT();
    if (count == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *count = device_count();
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    trace("cuDeviceGet(%d)", ordinal);
    REQUIRE_INIT();
    if (device == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    REQUIRE_INIT();
    if (name == NULL || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "pygds stand-in CUDA device %d", dev);
    return CUDA_SUCCESS;
}

static CUresult device_uuid(CUuuid *uuid, CUdevice dev)
{
    REQUIRE_INIT();
    if (uuid == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    memset(uuid->bytes, 0, sizeof uuid->bytes);
    memcpy(uuid->bytes, "pygds-standin", 13);
    uuid->bytes[15] = (char)dev;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) { return device_uuid(uuid, dev); }
API CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) { return device_uuid(uuid, dev); }

API CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    REQUIRE_INIT();
    if (bytes == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = STANDIN_TOTAL_MEM;
    return CUDA_SUCCESS;
}

/* The PCI address names no device in /sys on purpose: libcufile warns and
 * goes on. */
#define STANDIN_PCI_BUS 0xfe

static int device_attribute(int attrib, CUdevice dev)
{
    switch (attrib) {
    case 1: return 1024;        /* MAX_THREADS_PER_BLOCK */
    case 2: case 3: return 1024;
    case 4: return 64;
    case 5: return 2147483647;
    case 6: case 7: return 65535;
    case 8: return 49152;       /* SHARED_MEMORY_PER_BLOCK */
    case 9: return 65536;       /* TOTAL_CONSTANT_MEMORY */
    case 10: return 32;         /* WARP_SIZE */
    case 12: return 65536;      /* MAX_REGISTERS_PER_BLOCK */
    case 13: return 1980000;    /* CLOCK_RATE (kHz) */
    case 14: return 512;        /* TEXTURE_ALIGNMENT */
    case 15: return 1;          /* GPU_OVERLAP */
    case 16: return 132;        /* MULTIPROCESSOR_COUNT */
    case 19: return 1;          /* CAN_MAP_HOST_MEMORY */
    case 20: return 0;          /* COMPUTE_MODE: default */
    case 31: return 1;          /* CONCURRENT_KERNELS */
    case 33: return STANDIN_PCI_BUS;  /* PCI_BUS_ID */
    case 34: return dev;        /* PCI_DEVICE_ID */
    case 36: return 2619000;    /* MEMORY_CLOCK_RATE */
    case 37: return 5120;       /* GLOBAL_MEMORY_BUS_WIDTH */
    case 39: return 2048;       /* MAX_THREADS_PER_MULTIPROCESSOR */
    case 40: return 2;          /* ASYNC_ENGINE_COUNT */
    case 41: return 1;          /* UNIFIED_ADDRESSING */
    case 50: return 0;          /* PCI_DOMAIN_ID */
    case 75: return 9;          /* COMPUTE_CAPABILITY_MAJOR */
    case 76: return 0;          /* COMPUTE_CAPABILITY_MINOR */
    case 83: return 1;          /* MANAGED_MEMORY */
    case 89: return 1;          /* CONCURRENT_MANAGED_ACCESS */
    case 92: return 1;          /* CAN_USE_STREAM_MEM_OPS_V1 */
    case 116: return 1;         /* GPU_DIRECT_RDMA_SUPPORTED */
    case 124: return 1;         /* DMA_BUF_SUPPORTED */
    default: return 0;
    }
}

API CUresult cuDeviceGetAttribute(int *pi, int attrib, CUdevice dev)
{
    trace("cuDeviceGetAttribute(%d, dev=%d)", attrib, dev);
    REQUIRE_INIT();
    if (pi == NULL || attrib <= 0 || attrib >= 160)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *pi = device_attribute(attrib, dev);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceComputeCapability(int *major, int *minor, CUdevice dev)
{
    REQUIRE_INIT();
    if (major == NULL || minor == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *major = device_attribute(75, dev);
    *minor = device_attribute(76, dev);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetPCIBusId(char *busid, int len, CUdevice dev)
{
    trace("cuDeviceGetPCIBusId(dev=%d)", dev);
    REQUIRE_INIT();
    if (busid == NULL || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(busid, (size_t)len, "0000:%02x:%02x.0", STANDIN_PCI_BUS, dev);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetByPCIBusId(CUdevice *dev, const char *busid)
{
    REQUIRE_INIT();
    unsigned domain, bus, device, function;
    if (dev == NULL || busid == NULL ||
        sscanf(busid, "%x:%x:%x.%x", &domain, &bus, &device, &function) != 4)
        return CUDA_ERROR_INVALID_VALUE;
    if (domain != 0 || bus != STANDIN_PCI_BUS || function != 0 || !valid_device((int)device))
        return CUDA_ERROR_INVALID_DEVICE;
    *dev = (CUdevice)device;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceCanAccessPeer(int *can, CUdevice dev, CUdevice peer)
{
    REQUIRE_INIT();
    if (can == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev) || !valid_device(peer))
        return CUDA_ERROR_INVALID_DEVICE;
    *can = 0;
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------ primary contexts */

API CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    trace("cuDevicePrimaryCtxRetain(%d)", dev);
    REQUIRE_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_lock);
    g_primary[dev].refs++;
    pthread_mutex_unlock(&g_lock);
    *pctx = &g_primary[dev];
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    trace("cuDevicePrimaryCtxRelease(%d)", dev);
    REQUIRE_INIT();
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&g_lock);
    if (g_primary[dev].refs > 0)
        g_primary[dev].refs--;
    else
        r = CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_unlock(&g_lock);
    return r;
}

API CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    REQUIRE_INIT();
    if (flags == NULL || active == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_lock);
    *flags = g_primary[dev].flags;
    *active = g_primary[dev].refs > 0;
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags)
{
    REQUIRE_INIT();
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_lock);
    g_primary[dev].flags = flags;
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    REQUIRE_INIT();
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_lock);
    g_primary[dev].refs = 0;
    g_primary[dev].flags = 0;
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

/* --------------------------------------------------------------- contexts */

static CUresult ctx_create(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    REQUIRE_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    ctx_stack_touch();
    if (tl_depth == STANDIN_CTX_STACK)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct CUctx_st *c = calloc(1, sizeof *c);
    if (c == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->magic = CTX_MAGIC;
    c->device = dev;
    c->flags = flags;
    c->id = next_id();
    pthread_mutex_lock(&g_lock);
    c->next = g_created;
    g_created = c;
    pthread_mutex_unlock(&g_lock);
    tl_stack[tl_depth++] = c; /* a new context becomes current */
    *pctx = c;
    return CUDA_SUCCESS;
}

API CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    trace("cuCtxCreate_v2(dev=%d)", dev);
    return ctx_create(pctx, flags, dev);
}

API CUresult cuCtxCreate_v3(CUcontext *pctx, void *params, int nparams, unsigned int flags,
                            CUdevice dev)
{
    trace("cuCtxCreate_v3(dev=%d)", dev);
    (void)params;
    (void)nparams;
    return ctx_create(pctx, flags, dev);
}

API CUresult cuCtxCreate_v4(CUcontext *pctx, void *params, unsigned int flags, CUdevice dev)
{
    trace("cuCtxCreate_v4(dev=%d)", dev);
    (void)params;
    return ctx_create(pctx, flags, dev);
}

API CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    trace("cuCtxDestroy_v2(%p)", (void *)ctx);
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    struct CUctx_st **pp = &g_created;
    while (*pp != NULL && *pp != ctx)
        pp = &(*pp)->next;
    if (*pp == NULL) {
        pthread_mutex_unlock(&g_lock);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *pp = ctx->next;
    pthread_mutex_unlock(&g_lock);
    ctx_stack_touch();
    int j = 0; /* drop it from this thread's stack */
    for (int i = 0; i < tl_depth; i++)
        if (tl_stack[i] != ctx)
            tl_stack[j++] = tl_stack[i];
    tl_depth = j;
    free(ctx);
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    REQUIRE_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = current_ctx();
    trace("cuCtxGetCurrent -> %p", (void *)*pctx);
    return CUDA_SUCCESS;
}

API CUresult cuCtxSetCurrent(CUcontext ctx)
{
    trace("cuCtxSetCurrent(%p)", (void *)ctx);
    REQUIRE_INIT();
    if (ctx != NULL && !ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    ctx_stack_touch();
    if (ctx == NULL) {
        if (tl_depth > 0)
            tl_depth--;
    } else if (tl_depth == 0) {
        tl_stack[tl_depth++] = ctx;
    } else {
        tl_stack[tl_depth - 1] = ctx;
    }
    return CUDA_SUCCESS;
}

API CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    trace("cuCtxPushCurrent_v2(%p)", (void *)ctx);
    REQUIRE_INIT();
    if (!ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    ctx_stack_touch();
    if (tl_depth == STANDIN_CTX_STACK)
        return CUDA_ERROR_INVALID_VALUE;
    tl_stack[tl_depth++] = ctx;
    return CUDA_SUCCESS;
}

API CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    trace("cuCtxPopCurrent_v2");
    REQUIRE_INIT();
    ctx_stack_touch();
    if (tl_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = tl_stack[--tl_depth];
    if (pctx != NULL)
        *pctx = c;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetDevice(CUdevice *dev)
{
    REQUIRE_INIT();
    if (dev == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext c = current_ctx();
    if (c == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = c->device;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetFlags(unsigned int *flags)
{
    REQUIRE_INIT();
    if (flags == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext c = current_ctx();
    if (c == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *flags = c->flags;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetId(CUcontext ctx, unsigned long long *id)
{
    REQUIRE_INIT();
    if (id == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (ctx == NULL)
        ctx = current_ctx();
    if (ctx == NULL || !ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    *id = ctx->id;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int *version)
{
    REQUIRE_INIT();
    if (version == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (ctx == NULL)
        ctx = current_ctx();
    if (ctx == NULL || !ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    *version = 3020;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSynchronize(void)
{
    REQUIRE_INIT();
    return current_ctx() != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

API CUresult cuCtxGetStreamPriorityRange(int *least, int *greatest)
{
    REQUIRE_INIT();
    if (least != NULL)
        *least = 0;
    if (greatest != NULL)
        *greatest = -5;
    return CUDA_SUCCESS;
}

API CUresult cuCtxEnablePeerAccess(CUcontext peer, unsigned int flags)
{
    REQUIRE_INIT();
    (void)peer;
    (void)flags;
    return CUDA_ERROR_PEER_ACCESS_UNSUPPORTED;
}

/* ----------------------------------------------------------------- memory */

API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size)
{
    trace("cuMemAlloc_v2(%zu)", size);
    return device_alloc(dptr, size, K_DEVICE);
}

API CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags)
{
    trace("cuMemAllocManaged(%zu, %#x)", size, flags);
    return device_alloc(dptr, size, K_MANAGED);
}

API CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    trace("cuMemFree_v2(%#llx)", dptr);
    REQUIRE_INIT();
    if (dptr == 0)
        return CUDA_SUCCESS;
    static const int kinds[] = {K_DEVICE, K_MANAGED};
    struct alloc a;
    CUresult r = table_take((uintptr_t)dptr, kinds, 2, &a);
    if (r != CUDA_SUCCESS)
        return r;
    munmap((void *)a.base, a.map_size);
    if (a.alias != (char *)a.base)
        munmap(a.alias, a.map_size);
    return CUDA_SUCCESS;
}

API CUresult cuMemAllocHost_v2(void **pp, size_t size)
{
    trace("cuMemAllocHost_v2(%zu)", size);
    return host_alloc(pp, size, 0);
}

API CUresult cuMemHostAlloc(void **pp, size_t size, unsigned int flags)
{
    trace("cuMemHostAlloc(%zu, %#x)", size, flags);
    return host_alloc(pp, size, flags);
}

API CUresult cuMemFreeHost(void *p)
{
    trace("cuMemFreeHost(%p)", p);
    REQUIRE_INIT();
    static const int kinds[] = {K_HOST_ALLOC};
    struct alloc a;
    CUresult r = table_take((uintptr_t)p, kinds, 1, &a);
    if (r == CUDA_SUCCESS)
        munmap((void *)a.base, a.map_size);
    return r;
}

API CUresult cuMemHostRegister_v2(void *p, size_t size, unsigned int flags)
{
    trace("cuMemHostRegister_v2(%p, %zu, %#x)", p, size, flags);
    REQUIRE_INIT();
    if (p == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = current_ctx();
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct alloc a = {.base = (uintptr_t)p, .size = size, .map_size = size, .alias = p,
                      .kind = K_HOST_REGISTERED, .device = ctx->device, .ctx = ctx,
                      .flags = flags, .id = next_id()};
    pthread_mutex_lock(&g_lock);
    CUresult r = CUDA_SUCCESS;
    if (table_overlaps_locked(a.base, size))
        r = CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    else if (table_insert_locked(&a))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_unlock(&g_lock);
    return r;
}

API CUresult cuMemHostUnregister(void *p)
{
    trace("cuMemHostUnregister(%p)", p);
    REQUIRE_INIT();
    static const int kinds[] = {K_HOST_REGISTERED};
    struct alloc a;
    return table_take((uintptr_t)p, kinds, 1, &a) == CUDA_SUCCESS
               ? CUDA_SUCCESS
               : CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
}

static int pinned_kind(int kind) { return kind == K_HOST_ALLOC || kind == K_HOST_REGISTERED; }

API CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int flags)
{
    REQUIRE_INIT();
    if (pdptr == NULL || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked((uintptr_t)p);
    int ok = i >= 0 && pinned_kind(g_table[i].kind);
    pthread_mutex_unlock(&g_lock);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    *pdptr = (CUdeviceptr)(uintptr_t)p; /* unified addressing */
    return CUDA_SUCCESS;
}

API CUresult cuMemHostGetFlags(unsigned int *flags, void *p)
{
    REQUIRE_INIT();
    if (flags == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked((uintptr_t)p);
    int ok = i >= 0 && pinned_kind(g_table[i].kind);
    if (ok)
        *flags = g_table[i].flags;
    pthread_mutex_unlock(&g_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    trace("cuMemGetAddressRange_v2(%#llx)", dptr);
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked((uintptr_t)dptr);
    if (i >= 0) {
        if (pbase != NULL)
            *pbase = g_table[i].base;
        if (psize != NULL)
            *psize = g_table[i].size;
    }
    pthread_mutex_unlock(&g_lock);
    return i >= 0 ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

API CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    REQUIRE_INIT();
    CUdevice dev = current_device();
    if (dev < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&g_lock);
    size_t used = g_device_bytes[dev];
    pthread_mutex_unlock(&g_lock);
    if (free_bytes != NULL)
        *free_bytes = STANDIN_TOTAL_MEM - used;
    if (total != NULL)
        *total = STANDIN_TOTAL_MEM;
    return CUDA_SUCCESS;
}

API CUresult cuMemGetHandleForAddressRange(void *handle, CUdeviceptr dptr, size_t size,
                                           int type, unsigned long long flags)
{
    trace("cuMemGetHandleForAddressRange");
    REQUIRE_INIT();
    (void)handle, (void)dptr, (void)size, (void)type, (void)flags;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ------------------------------------------------------------------ copies */

#define CU_STREAM_LEGACY ((CUstream)0x1)
#define CU_STREAM_PER_THREAD ((CUstream)0x2)

static int stream_ok(CUstream s);

API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    trace("cuMemcpy(%#llx, %#llx, %zu)", dst, src, n);
    REQUIRE_INIT();
    return copy_bytes((uintptr_t)dst, 0, (uintptr_t)src, 0, n);
}

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
    trace("cuMemcpyHtoD_v2(%#llx, %p, %zu)", dst, src, n);
    REQUIRE_INIT();
    return copy_bytes((uintptr_t)dst, 1, (uintptr_t)src, 0, n);
}

API CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    trace("cuMemcpyDtoH_v2(%p, %#llx, %zu)", dst, src, n);
    REQUIRE_INIT();
    return copy_bytes((uintptr_t)dst, 0, (uintptr_t)src, 1, n);
}

API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    trace("cuMemcpyDtoD_v2(%#llx, %#llx, %zu)", dst, src, n);
    REQUIRE_INIT();
    return copy_bytes((uintptr_t)dst, 1, (uintptr_t)src, 1, n);
}

API CUresult cuMemcpyPeer(CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx,
                          size_t n)
{
    REQUIRE_INIT();
    if (!ctx_valid(dctx) || !ctx_valid(sctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    return copy_bytes((uintptr_t)dst, 1, (uintptr_t)src, 1, n);
}

/* Async copies finish before they return: the stream has nothing to wait for. */
#define CHECK_STREAM(s)                                                       \
    do {                                                                      \
        if (!stream_ok(s))                                                    \
            return CUDA_ERROR_INVALID_HANDLE;                                 \
    } while (0)

API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return cuMemcpy(dst, src, n);
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return cuMemcpyHtoD_v2(dst, src, n);
}

API CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return cuMemcpyDtoH_v2(dst, src, n);
}

API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return cuMemcpyDtoD_v2(dst, src, n);
}

API CUresult cuMemcpyPeerAsync(CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx,
                               size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return cuMemcpyPeer(dst, dctx, src, sctx, n);
}

/* cuda.h's CUmemLocation and CUmemcpyAttributes (CUDA 12.8 and later). */
typedef struct { int type; int id; } CUmemLocation;
typedef struct {
    int srcAccessOrder;
    CUmemLocation srcLocHint, dstLocHint;
    unsigned int flags;
} CUmemcpyAttributes;

enum { CU_MEMCPY_SRC_ACCESS_ORDER_STREAM = 1, CU_MEMCPY_SRC_ACCESS_ORDER_ANY = 3 };

/* 1 when attrs/attrIdxs follow cuda.h's rules: the first index is 0, each
 * is larger than the one before and below count, and every entry names a
 * valid source access order. */
static int batch_attrs_valid(const CUmemcpyAttributes *attrs, const size_t *idxs,
                             size_t nattrs, size_t count)
{
    if (attrs == NULL || idxs == NULL || nattrs == 0 || nattrs > count || idxs[0] != 0)
        return 0;
    for (size_t k = 0; k < nattrs; k++) {
        if (k > 0 && idxs[k] <= idxs[k - 1])
            return 0;
        if (idxs[k] >= count)
            return 0;
        if (attrs[k].srcAccessOrder < CU_MEMCPY_SRC_ACCESS_ORDER_STREAM ||
            attrs[k].srcAccessOrder > CU_MEMCPY_SRC_ACCESS_ORDER_ANY)
            return 0;
    }
    return 1;
}

/* CUDA 13's cuMemcpyBatchAsync (CUDA 12.8's form took a failIdx before the
 * stream). Every copy is checked and resolved to host addresses before the
 * first byte moves, so a rejected batch leaves every destination untouched. */
API CUresult cuMemcpyBatchAsync_v2(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                   size_t count, CUmemcpyAttributes *attrs, size_t *attrIdxs,
                                   size_t numAttrs, CUstream s)
{
    trace("cuMemcpyBatchAsync_v2(count=%zu, numAttrs=%zu, stream=%p)", count, numAttrs,
          (void *)s);
    REQUIRE_INIT();
    if (s == NULL || s == CU_STREAM_LEGACY) /* the legacy NULL stream is refused */
        return CUDA_ERROR_INVALID_VALUE;
    CHECK_STREAM(s);
    if (dsts == NULL || srcs == NULL || sizes == NULL || count == 0 ||
        !batch_attrs_valid(attrs, attrIdxs, numAttrs, count))
        return CUDA_ERROR_INVALID_VALUE;
    char **spans = malloc(2 * count * sizeof *spans);
    if (spans == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CUDA_SUCCESS;
    for (size_t i = 0; i < count && r == CUDA_SUCCESS; i++) {
        r = host_span((uintptr_t)dsts[i], sizes[i], 0, &spans[2 * i]);
        if (r == CUDA_SUCCESS)
            r = host_span((uintptr_t)srcs[i], sizes[i], 0, &spans[2 * i + 1]);
    }
    for (size_t i = 0; i < count && r == CUDA_SUCCESS; i++)
        if (sizes[i] > 0)
            memmove(spans[2 * i], spans[2 * i + 1], sizes[i]);
    free(spans);
    return r;
}

static CUresult memset_elems(CUdeviceptr dst, unsigned value, size_t elem, size_t n)
{
    REQUIRE_INIT();
    if (n == 0)
        return CUDA_SUCCESS;
    char *d;
    CUresult r = host_span((uintptr_t)dst, n * elem, 1, &d);
    if (r != CUDA_SUCCESS)
        return r;
    if (elem == 1) {
        memset(d, (int)(value & 0xff), n);
    } else {
        for (size_t i = 0; i < n; i++)
            memcpy(d + i * elem, &value, elem); /* little endian: low bytes */
    }
    return CUDA_SUCCESS;
}

API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char uc, size_t n)
{
    trace("cuMemsetD8_v2(%#llx, %u, %zu)", dst, uc, n);
    return memset_elems(dst, uc, 1, n);
}

API CUresult cuMemsetD16_v2(CUdeviceptr dst, unsigned short us, size_t n)
{
    return memset_elems(dst, us, 2, n);
}

API CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int ui, size_t n)
{
    return memset_elems(dst, ui, 4, n);
}

API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char uc, size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return memset_elems(dst, uc, 1, n);
}

API CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short us, size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return memset_elems(dst, us, 2, n);
}

API CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int ui, size_t n, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return memset_elems(dst, ui, 4, n);
}

/* --------------------------------------------------------------- pointers */

/* Write one attribute of entry a (NULL: pageable memory) to data. */
static CUresult pointer_attribute(void *data, int attr, uintptr_t ptr, const struct alloc *a)
{
    int device_side = a != NULL && (a->kind == K_DEVICE || a->kind == K_MANAGED);
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
        *(CUcontext *)data = a ? a->ctx : NULL;
        break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned *)data = a == NULL ? 0 : device_side ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        *(CUdeviceptr *)data = a ? (CUdeviceptr)ptr : 0;
        break;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (a != NULL && a->kind == K_DEVICE)
            return CUDA_ERROR_INVALID_VALUE;
        *(void **)data = a ? (void *)ptr : NULL;
        break;
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS:
        *(int *)data = a ? a->sync_memops : 0;
        break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID:
        *(unsigned long long *)data = a ? a->id : 0;
        break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
        *(int *)data = a != NULL && a->kind == K_MANAGED;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = a ? a->device : -2;
        break;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        *(int *)data = a != NULL && a->kind == K_DEVICE;
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
        *(CUdeviceptr *)data = a ? a->base : 0;
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE:
        *(size_t *)data = a ? a->size : 0;
        break;
    case CU_POINTER_ATTRIBUTE_MAPPED:
        *(int *)data = a != NULL;
        break;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES:
    case CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE:
        *(unsigned *)data = 0;
        break;
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
        *(unsigned *)data = a != NULL && a->kind == K_DEVICE;
        break;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        *(unsigned *)data = a ? 3 : 0; /* read-write */
        break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
        *(void **)data = NULL;
        break;
    default: /* P2P_TOKENS and unknown attributes */
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

API CUresult cuPointerGetAttribute(void *data, int attr, CUdeviceptr ptr)
{
    REQUIRE_INIT();
    if (data == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked((uintptr_t)ptr);
    struct alloc a;
    if (i >= 0)
        a = g_table[i];
    pthread_mutex_unlock(&g_lock);
    /* Pageable memory is unknown to the driver: the real one fails too. */
    CUresult r = i < 0 ? CUDA_ERROR_INVALID_VALUE
                       : pointer_attribute(data, attr, (uintptr_t)ptr, &a);
    trace("cuPointerGetAttribute(attr=%d, %#llx) -> %d", attr, ptr, r);
    return r;
}

/* Unlike cuPointerGetAttribute, unknown pointers succeed with empty values. */
API CUresult cuPointerGetAttributes(unsigned int n, int *attrs, void **data, CUdeviceptr ptr)
{
    REQUIRE_INIT();
    if (attrs == NULL || data == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked((uintptr_t)ptr);
    struct alloc a;
    if (i >= 0)
        a = g_table[i];
    pthread_mutex_unlock(&g_lock);
    for (unsigned k = 0; k < n; k++) {
        trace("cuPointerGetAttributes(attr=%d, %#llx)", attrs[k], ptr);
        if (data[k] == NULL)
            continue;
        CUresult r = pointer_attribute(data[k], attrs[k], (uintptr_t)ptr, i >= 0 ? &a : NULL);
        if (r != CUDA_SUCCESS && i >= 0)
            return r;
    }
    return CUDA_SUCCESS;
}

API CUresult cuPointerSetAttribute(const void *value, int attr, CUdeviceptr ptr)
{
    trace("cuPointerSetAttribute(attr=%d, %#llx)", attr, ptr);
    REQUIRE_INIT();
    if (value == NULL || attr != CU_POINTER_ATTRIBUTE_SYNC_MEMOPS)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    long i = table_find_locked((uintptr_t)ptr);
    if (i >= 0)
        g_table[i].sync_memops = *(const int *)value != 0;
    pthread_mutex_unlock(&g_lock);
    return i >= 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---------------------------------------------------------------- streams */

struct CUstream_st {
    CUcontext ctx;
    unsigned flags;
    int priority;
    unsigned long long id;
    struct CUstream_st *next;
};
static struct CUstream_st *g_streams;

static int stream_ok(CUstream s)
{
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD)
        return 1;
    pthread_mutex_lock(&g_lock);
    struct CUstream_st *p = g_streams;
    while (p != NULL && p != s)
        p = p->next;
    pthread_mutex_unlock(&g_lock);
    return p != NULL;
}

static CUresult stream_create(CUstream *ps, unsigned flags, int priority)
{
    REQUIRE_INIT();
    if (ps == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = current_ctx();
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct CUstream_st *s = calloc(1, sizeof *s);
    if (s == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    s->ctx = ctx;
    s->flags = flags;
    s->priority = priority;
    s->id = next_id();
    pthread_mutex_lock(&g_lock);
    s->next = g_streams;
    g_streams = s;
    pthread_mutex_unlock(&g_lock);
    *ps = s;
    trace("stream create %p", (void *)s);
    return CUDA_SUCCESS;
}

API CUresult cuStreamCreate(CUstream *ps, unsigned int flags) { return stream_create(ps, flags, 0); }

API CUresult cuStreamCreateWithPriority(CUstream *ps, unsigned int flags, int priority)
{
    return stream_create(ps, flags, priority);
}

API CUresult cuStreamDestroy_v2(CUstream s)
{
    trace("cuStreamDestroy_v2(%p)", (void *)s);
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    struct CUstream_st **pp = &g_streams;
    while (*pp != NULL && *pp != s)
        pp = &(*pp)->next;
    int found = *pp != NULL;
    if (found)
        *pp = s->next;
    pthread_mutex_unlock(&g_lock);
    if (!found)
        return CUDA_ERROR_INVALID_HANDLE;
    free(s);
    return CUDA_SUCCESS;
}

API CUresult cuStreamSynchronize(CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return CUDA_SUCCESS;
}

API CUresult cuStreamQuery(CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    return CUDA_SUCCESS;
}

API CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    (void)e;
    (void)flags;
    return CUDA_SUCCESS;
}

static int is_builtin_stream(CUstream s)
{
    return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD;
}

API CUresult cuStreamGetCtx(CUstream s, CUcontext *pctx)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = is_builtin_stream(s) ? current_ctx() : s->ctx;
    return *pctx != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

API CUresult cuStreamGetDevice(CUstream s, CUdevice *dev)
{
    CUcontext c;
    CUresult r = cuStreamGetCtx(s, &c);
    if (r == CUDA_SUCCESS && dev == NULL)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *dev = c->device;
    return r;
}

API CUresult cuStreamGetFlags(CUstream s, unsigned int *flags)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (flags == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *flags = is_builtin_stream(s) ? 0 : s->flags;
    return CUDA_SUCCESS;
}

API CUresult cuStreamGetPriority(CUstream s, int *priority)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (priority == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *priority = is_builtin_stream(s) ? 0 : s->priority;
    return CUDA_SUCCESS;
}

API CUresult cuStreamGetId(CUstream s, unsigned long long *id)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (id == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *id = is_builtin_stream(s) ? (unsigned long long)(uintptr_t)s : s->id;
    return CUDA_SUCCESS;
}

/* Host functions run at once, in the caller's thread: every earlier piece of
 * work on the stream has already finished. */
API CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void *user)
{
    trace("cuLaunchHostFunc(%p)", (void *)s);
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (fn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    fn(user);
    return CUDA_SUCCESS;
}

API CUresult cuLaunchHostFunc_v2(CUstream s, CUhostFn fn, void *user, unsigned int sync_mode)
{
    (void)sync_mode;
    return cuLaunchHostFunc(s, fn, user);
}

API CUresult cuStreamAddCallback(CUstream s, CUstreamCallback cb, void *user, unsigned int flags)
{
    trace("cuStreamAddCallback(%p)", (void *)s);
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (cb == NULL || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    cb(s, CUDA_SUCCESS, user);
    return CUDA_SUCCESS;
}

/* Stream memory operations on a 32-bit word in device or pinned memory. */
static CUresult stream_word(CUstream s, CUdeviceptr addr, cuuint32_t **word)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (addr % 4 != 0)
        return CUDA_ERROR_INVALID_VALUE;
    char *p;
    CUresult r = host_span((uintptr_t)addr, 4, 1, &p);
    if (r == CUDA_SUCCESS)
        *word = (cuuint32_t *)(void *)p;
    return r;
}

API CUresult cuStreamWriteValue32_v2(CUstream s, CUdeviceptr addr, cuuint32_t value,
                                     unsigned int flags)
{
    trace("cuStreamWriteValue32_v2(%#llx, %u)", addr, value);
    (void)flags;
    cuuint32_t *w;
    CUresult r = stream_word(s, addr, &w);
    if (r == CUDA_SUCCESS)
        __atomic_store_n(w, value, __ATOMIC_SEQ_CST);
    return r;
}

/* The stream has no later work to hold back: the wait is over as soon as it
 * is queued. */
API CUresult cuStreamWaitValue32_v2(CUstream s, CUdeviceptr addr, cuuint32_t value,
                                    unsigned int flags)
{
    trace("cuStreamWaitValue32_v2(%#llx, %u, %#x)", addr, value, flags);
    cuuint32_t *w;
    return stream_word(s, addr, &w);
}

/* ----------------------------------------------------------------- events */

struct CUevent_st {
    unsigned flags;
    int recorded;
    struct timespec when;
    struct CUevent_st *next;
};
static struct CUevent_st *g_events;

static int event_ok(CUevent e)
{
    pthread_mutex_lock(&g_lock);
    struct CUevent_st *p = g_events;
    while (p != NULL && p != e)
        p = p->next;
    pthread_mutex_unlock(&g_lock);
    return p != NULL;
}

API CUresult cuEventCreate(CUevent *pe, unsigned int flags)
{
    REQUIRE_INIT();
    if (pe == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (current_ctx() == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct CUevent_st *e = calloc(1, sizeof *e);
    if (e == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->flags = flags;
    pthread_mutex_lock(&g_lock);
    e->next = g_events;
    g_events = e;
    pthread_mutex_unlock(&g_lock);
    *pe = e;
    return CUDA_SUCCESS;
}

API CUresult cuEventRecord(CUevent e, CUstream s)
{
    REQUIRE_INIT();
    CHECK_STREAM(s);
    if (!event_ok(e))
        return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_lock);
    clock_gettime(CLOCK_MONOTONIC, &e->when);
    e->recorded = 1;
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

API CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned int flags)
{
    (void)flags;
    return cuEventRecord(e, s);
}

API CUresult cuEventQuery(CUevent e)
{
    REQUIRE_INIT();
    return event_ok(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuEventSynchronize(CUevent e)
{
    REQUIRE_INIT();
    return event_ok(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuEventDestroy_v2(CUevent e)
{
    REQUIRE_INIT();
    pthread_mutex_lock(&g_lock);
    struct CUevent_st **pp = &g_events;
    while (*pp != NULL && *pp != e)
        pp = &(*pp)->next;
    int found = *pp != NULL;
    if (found)
        *pp = e->next;
    pthread_mutex_unlock(&g_lock);
    if (!found)
        return CUDA_ERROR_INVALID_HANDLE;
    free(e);
    return CUDA_SUCCESS;
}

API CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end)
{
    REQUIRE_INIT();
    if (ms == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (!event_ok(start) || !event_ok(end))
        return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_lock);
    CUresult r = CUDA_SUCCESS;
    if (!start->recorded || !end->recorded ||
        ((start->flags | end->flags) & EVENT_DISABLE_TIMING))
        r = CUDA_ERROR_INVALID_HANDLE;
    else
        *ms = (float)((end->when.tv_sec - start->when.tv_sec) * 1e3 +
                      (end->when.tv_nsec - start->when.tv_nsec) / 1e6);
    pthread_mutex_unlock(&g_lock);
    return r;
}

API CUresult cuEventElapsedTime_v2(float *ms, CUevent start, CUevent end)
{
    return cuEventElapsedTime(ms, start, end);
}

/* -------------------------------------------------------------------- IPC */

/* Inter-process sharing needs a real driver; callers must cope, as they do
 * with drivers that forbid it. */
API CUresult cuIpcGetMemHandle(void *handle, CUdeviceptr dptr)
{
    trace("cuIpcGetMemHandle");
    REQUIRE_INIT();
    (void)handle, (void)dptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}

API CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, const char *handle, unsigned int flags)
{
    trace("cuIpcOpenMemHandle_v2");
    REQUIRE_INIT();
    (void)pdptr, (void)handle, (void)flags;
    return CUDA_ERROR_NOT_SUPPORTED;
}

API CUresult cuIpcCloseMemHandle(CUdeviceptr dptr)
{
    REQUIRE_INIT();
    (void)dptr;
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuIpcGetEventHandle(void *handle, CUevent e)
{
    trace("cuIpcGetEventHandle");
    REQUIRE_INIT();
    (void)handle, (void)e;
    return CUDA_ERROR_NOT_SUPPORTED;
}

API CUresult cuIpcOpenEventHandle(CUevent *pe, const char *handle)
{
    trace("cuIpcOpenEventHandle");
    REQUIRE_INIT();
    (void)pe, (void)handle;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ------------------------------------------------------ cuGetProcAddress */

/* Base name -> implementation, with the CUDA version that introduced the
 * variant: a request for version V gets the newest variant not newer than V. */
API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                 cuuint64_t flags, int *status);
API CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags);

static const struct proc { const char *name; int version; void *fn; } g_procs[] = {
#define P(name, version, fn) {name, version, (void *)(fn)}
    P("cuGetProcAddress", 11030, cuGetProcAddress),
    P("cuGetProcAddress", 12000, cuGetProcAddress_v2),
    P("cuGetErrorString", 6000, cuGetErrorString),
    P("cuGetErrorName", 6000, cuGetErrorName),
    P("cuInit", 2000, cuInit),
    P("cuDriverGetVersion", 2020, cuDriverGetVersion),
    P("cuGetExportTable", 3000, cuGetExportTable),
    P("cuDeviceGet", 2000, cuDeviceGet),
    P("cuDeviceGetCount", 2000, cuDeviceGetCount),
    P("cuDeviceGetName", 2000, cuDeviceGetName),
    P("cuDeviceGetUuid", 9020, cuDeviceGetUuid),
    P("cuDeviceGetUuid", 11040, cuDeviceGetUuid_v2),
    P("cuDeviceTotalMem", 3020, cuDeviceTotalMem_v2),
    P("cuDeviceGetAttribute", 2000, cuDeviceGetAttribute),
    P("cuDeviceComputeCapability", 2000, cuDeviceComputeCapability),
    P("cuDeviceGetPCIBusId", 4010, cuDeviceGetPCIBusId),
    P("cuDeviceGetByPCIBusId", 4010, cuDeviceGetByPCIBusId),
    P("cuDeviceCanAccessPeer", 4000, cuDeviceCanAccessPeer),
    P("cuDevicePrimaryCtxRetain", 7000, cuDevicePrimaryCtxRetain),
    P("cuDevicePrimaryCtxRelease", 11000, cuDevicePrimaryCtxRelease_v2),
    P("cuDevicePrimaryCtxSetFlags", 11000, cuDevicePrimaryCtxSetFlags_v2),
    P("cuDevicePrimaryCtxGetState", 7000, cuDevicePrimaryCtxGetState),
    P("cuDevicePrimaryCtxReset", 11000, cuDevicePrimaryCtxReset_v2),
    P("cuCtxCreate", 3020, cuCtxCreate_v2),
    P("cuCtxCreate", 11040, cuCtxCreate_v3),
    P("cuCtxCreate", 12050, cuCtxCreate_v4),
    P("cuCtxDestroy", 4000, cuCtxDestroy_v2),
    P("cuCtxPushCurrent", 4000, cuCtxPushCurrent_v2),
    P("cuCtxPopCurrent", 4000, cuCtxPopCurrent_v2),
    P("cuCtxSetCurrent", 4000, cuCtxSetCurrent),
    P("cuCtxGetCurrent", 4000, cuCtxGetCurrent),
    P("cuCtxGetDevice", 2000, cuCtxGetDevice),
    P("cuCtxGetFlags", 7000, cuCtxGetFlags),
    P("cuCtxGetId", 12000, cuCtxGetId),
    P("cuCtxGetApiVersion", 3020, cuCtxGetApiVersion),
    P("cuCtxSynchronize", 2000, cuCtxSynchronize),
    P("cuCtxGetStreamPriorityRange", 5050, cuCtxGetStreamPriorityRange),
    P("cuCtxEnablePeerAccess", 4000, cuCtxEnablePeerAccess),
    P("cuMemGetInfo", 3020, cuMemGetInfo_v2),
    P("cuMemAlloc", 3020, cuMemAlloc_v2),
    P("cuMemFree", 3020, cuMemFree_v2),
    P("cuMemGetAddressRange", 3020, cuMemGetAddressRange_v2),
    P("cuMemAllocHost", 3020, cuMemAllocHost_v2),
    P("cuMemFreeHost", 2000, cuMemFreeHost),
    P("cuMemHostAlloc", 2020, cuMemHostAlloc),
    P("cuMemHostGetDevicePointer", 3020, cuMemHostGetDevicePointer_v2),
    P("cuMemHostGetFlags", 2030, cuMemHostGetFlags),
    P("cuMemAllocManaged", 6000, cuMemAllocManaged),
    P("cuMemHostRegister", 6050, cuMemHostRegister_v2),
    P("cuMemHostUnregister", 4000, cuMemHostUnregister),
    P("cuMemGetHandleForAddressRange", 11070, cuMemGetHandleForAddressRange),
    P("cuMemcpy", 4000, cuMemcpy),
    P("cuMemcpyPeer", 4000, cuMemcpyPeer),
    P("cuMemcpyHtoD", 3020, cuMemcpyHtoD_v2),
    P("cuMemcpyDtoH", 3020, cuMemcpyDtoH_v2),
    P("cuMemcpyDtoD", 3020, cuMemcpyDtoD_v2),
    P("cuMemcpyAsync", 4000, cuMemcpyAsync),
    P("cuMemcpyPeerAsync", 4000, cuMemcpyPeerAsync),
    P("cuMemcpyHtoDAsync", 3020, cuMemcpyHtoDAsync_v2),
    P("cuMemcpyDtoHAsync", 3020, cuMemcpyDtoHAsync_v2),
    P("cuMemcpyDtoDAsync", 3020, cuMemcpyDtoDAsync_v2),
    P("cuMemcpyBatchAsync", 13000, cuMemcpyBatchAsync_v2),
    P("cuMemsetD8", 3020, cuMemsetD8_v2),
    P("cuMemsetD16", 3020, cuMemsetD16_v2),
    P("cuMemsetD32", 3020, cuMemsetD32_v2),
    P("cuMemsetD8Async", 3020, cuMemsetD8Async),
    P("cuMemsetD16Async", 3020, cuMemsetD16Async),
    P("cuMemsetD32Async", 3020, cuMemsetD32Async),
    P("cuPointerGetAttribute", 4000, cuPointerGetAttribute),
    P("cuPointerGetAttributes", 7000, cuPointerGetAttributes),
    P("cuPointerSetAttribute", 6000, cuPointerSetAttribute),
    P("cuStreamCreate", 2000, cuStreamCreate),
    P("cuStreamCreateWithPriority", 5050, cuStreamCreateWithPriority),
    P("cuStreamDestroy", 4000, cuStreamDestroy_v2),
    P("cuStreamSynchronize", 2000, cuStreamSynchronize),
    P("cuStreamQuery", 2000, cuStreamQuery),
    P("cuStreamWaitEvent", 3020, cuStreamWaitEvent),
    P("cuStreamGetCtx", 9020, cuStreamGetCtx),
    P("cuStreamGetDevice", 12080, cuStreamGetDevice),
    P("cuStreamGetFlags", 5050, cuStreamGetFlags),
    P("cuStreamGetPriority", 5050, cuStreamGetPriority),
    P("cuStreamGetId", 12000, cuStreamGetId),
    P("cuStreamAddCallback", 5000, cuStreamAddCallback),
    P("cuStreamWaitValue32", 11070, cuStreamWaitValue32_v2),
    P("cuStreamWriteValue32", 11070, cuStreamWriteValue32_v2),
    P("cuLaunchHostFunc", 10000, cuLaunchHostFunc),
    P("cuLaunchHostFunc", 13010, cuLaunchHostFunc_v2),
    P("cuEventCreate", 2000, cuEventCreate),
    P("cuEventRecord", 2000, cuEventRecord),
    P("cuEventRecordWithFlags", 11010, cuEventRecordWithFlags),
    P("cuEventQuery", 2000, cuEventQuery),
    P("cuEventSynchronize", 2000, cuEventSynchronize),
    P("cuEventDestroy", 4000, cuEventDestroy_v2),
    P("cuEventElapsedTime", 2000, cuEventElapsedTime),
    P("cuEventElapsedTime", 12080, cuEventElapsedTime_v2),
    P("cuIpcGetMemHandle", 4010, cuIpcGetMemHandle),
    P("cuIpcOpenMemHandle", 11000, cuIpcOpenMemHandle_v2),
    P("cuIpcCloseMemHandle", 4010, cuIpcCloseMemHandle),
    P("cuIpcGetEventHandle", 4010, cuIpcGetEventHandle),
    P("cuIpcOpenEventHandle", 4010, cuIpcOpenEventHandle),
#undef P
};

API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                 cuuint64_t flags, int *status)
{
    (void)flags; /* per-thread default streams behave as legacy ones here */
    if (symbol == NULL || pfn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    const struct proc *best = NULL;
    int known = 0;
    for (size_t i = 0; i < sizeof g_procs / sizeof g_procs[0]; i++) {
        const struct proc *p = &g_procs[i];
        if (strcmp(p->name, symbol) != 0)
            continue;
        known = 1;
        if (p->version <= version && (best == NULL || p->version > best->version))
            best = p;
    }
    *pfn = best ? best->fn : NULL;
    if (status != NULL)
        *status = best ? CU_GET_PROC_ADDRESS_SUCCESS
                       : known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                               : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (best == NULL)
        trace("cuGetProcAddress(%s, %d): not found", symbol, version);
    return best ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

API CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    return cuGetProcAddress_v2(symbol, pfn, version, flags, NULL);
}
