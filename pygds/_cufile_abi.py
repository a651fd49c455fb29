"""The cuFile ABI of `cufile.h` (CUDA 12.x and 13.x, libcufile 1.11 to 1.20) as ctypes, name for name.

Declarations only: loading the library and calling it live in `_lib.py`, decoding errors in
`errors.py`. `tests/test_cufile_abi_probe.py` compiles a C probe against the real header and
checks every size, offset, enum value and constant declared here.

Naming convention:
- Structs and unions carry their C typedef names (`CUfileDescr_t`); `sockaddr_t` and `timespec`
  (for `struct timespec`) are declared too because cuFile prototypes use them.
- Every C enum is an `IntEnum` named after its typedef (`CUfileStatus_t`, `CUfileOpError`), or after
  its tag where the header has no typedef (`CUfileFileHandleType`). Every enumerator is also a
  module-level `int` with its C name (`CUFILE_BATCH`). In structs and prototypes enums are `c_int`.
- Every object-like integer `#define` is a module-level `int` with its C name.
- `PROTOTYPES[name] = (restype, argtypes)` for every function the header declares.

12.x vs 13.x: the headers differ only by additions (see FUNCTION_SINCE and the notes at the enums),
with two layout changes a caller must respect: `CU_FILE_IO_MAX_ERROR` was 5039 before libcufile
1.15 (5039 is `CU_FILE_INTERNAL_BATCH_SETUP_ERROR` since), and `CUfileStatsLevel1_t` grew at its end
in 1.19, which moves every field after `basic` in Level 2 and 3 (`STATS_LAYOUTS` picks the right one).
"""
from __future__ import annotations

import ctypes
from enum import IntEnum

# --- basic C types --------------------------------------------------------------------------
CUresult = ctypes.c_int  # enum cudaError_enum in cuda.h
CUstream = ctypes.c_void_p  # struct CUstream_st *
off_t = ctypes.c_int64  # LP64 Linux, _FILE_OFFSET_BITS irrelevant on 64-bit
loff_t = ctypes.c_int64
ssize_t = ctypes.c_ssize_t
size_t = ctypes.c_size_t
_enum = ctypes.c_int  # every cufile.h enum fits in an int

CUfileHandle_t = ctypes.c_void_p
CUfileBatchHandle_t = ctypes.c_void_p

# --- #define constants --------------------------------------------------------------------
CUFILEOP_BASE_ERR = 5000

CU_FILE_RDMA_REGISTER = 1
CU_FILE_RDMA_RELAXED_ORDERING = 1 << 1

# RDMA status codes between cuObject and cuFile (libcufile >= 1.19).
CU_FILE_RDMA_ERR_BASE = 6000
CU_FILE_RDMA_SUCCESS = 0
CU_FILE_RDMA_RESET_TOKEN = CU_FILE_RDMA_ERR_BASE + 1
CU_FILE_RDMA_RESET_TOKEN_FAILED = CU_FILE_RDMA_ERR_BASE + 2

# cuFileStreamRegister flags.
CU_FILE_STREAM_FIXED_BUF_OFFSET = 1
CU_FILE_STREAM_FIXED_FILE_OFFSET = 2
CU_FILE_STREAM_FIXED_FILE_SIZE = 4
CU_FILE_STREAM_PAGE_ALIGNED_INPUTS = 8

CUFILE_GPU_UUID_LEN = 16

# --- CUfileOpError: the header's CUFILEOP_STATUS_ENTRIES table ---------------------------------
#: (code, C name, the header's description string), as in libcufile 1.15+ (CUDA 13 wheels and later).
CUFILEOP_STATUS_ENTRIES: tuple[tuple[int, str, str], ...] = (
    (0, "CU_FILE_SUCCESS", "cufile success"),
    (5001, "CU_FILE_DRIVER_NOT_INITIALIZED",
     "nvidia-fs driver is not loaded. Set allow_compat_mode to true in cufile.json file to enable compatible mode"),
    (5002, "CU_FILE_DRIVER_INVALID_PROPS", "invalid property"),
    (5003, "CU_FILE_DRIVER_UNSUPPORTED_LIMIT", "property range error"),
    (5004, "CU_FILE_DRIVER_VERSION_MISMATCH", "nvidia-fs driver version mismatch"),
    (5005, "CU_FILE_DRIVER_VERSION_READ_ERROR", "nvidia-fs driver version read error"),
    (5006, "CU_FILE_DRIVER_CLOSING", "driver shutdown in progress"),
    (5007, "CU_FILE_PLATFORM_NOT_SUPPORTED", "GPUDirect Storage not supported on current platform"),
    (5008, "CU_FILE_IO_NOT_SUPPORTED", "GPUDirect Storage not supported on current file"),
    (5009, "CU_FILE_DEVICE_NOT_SUPPORTED", "GPUDirect Storage not supported on current GPU"),
    (5010, "CU_FILE_NVFS_DRIVER_ERROR", "nvidia-fs driver ioctl error"),
    (5011, "CU_FILE_CUDA_DRIVER_ERROR", "CUDA Driver API error"),
    (5012, "CU_FILE_CUDA_POINTER_INVALID", "invalid device pointer"),
    (5013, "CU_FILE_CUDA_MEMORY_TYPE_INVALID", "invalid pointer memory type"),
    (5014, "CU_FILE_CUDA_POINTER_RANGE_ERROR", "pointer range exceeds allocated address range"),
    (5015, "CU_FILE_CUDA_CONTEXT_MISMATCH", "cuda context mismatch"),
    (5016, "CU_FILE_INVALID_MAPPING_SIZE", "access beyond maximum pinned size"),
    (5017, "CU_FILE_INVALID_MAPPING_RANGE", "access beyond mapped size"),
    (5018, "CU_FILE_INVALID_FILE_TYPE", "unsupported file type"),
    (5019, "CU_FILE_INVALID_FILE_OPEN_FLAG", "unsupported file open flags"),
    (5020, "CU_FILE_DIO_NOT_SET", "fd direct IO not set"),
    (5022, "CU_FILE_INVALID_VALUE", "invalid arguments"),
    (5023, "CU_FILE_MEMORY_ALREADY_REGISTERED", "device pointer already registered"),
    (5024, "CU_FILE_MEMORY_NOT_REGISTERED", "device pointer lookup failure"),
    (5025, "CU_FILE_PERMISSION_DENIED", "driver or file access error"),
    (5026, "CU_FILE_DRIVER_ALREADY_OPEN", "driver is already open"),
    (5027, "CU_FILE_HANDLE_NOT_REGISTERED", "file descriptor is not registered"),
    (5028, "CU_FILE_HANDLE_ALREADY_REGISTERED", "file descriptor is already registered"),
    (5029, "CU_FILE_DEVICE_NOT_FOUND", "GPU device not found"),
    (5030, "CU_FILE_INTERNAL_ERROR", "internal error"),
    (5031, "CU_FILE_GETNEWFD_FAILED", "failed to obtain new file descriptor"),
    (5033, "CU_FILE_NVFS_SETUP_ERROR", "NVFS driver initialization error"),
    (5034, "CU_FILE_IO_DISABLED", "GPUDirect Storage disabled by config on current file"),
    (5035, "CU_FILE_BATCH_SUBMIT_FAILED", "failed to submit batch operation"),
    (5036, "CU_FILE_GPU_MEMORY_PINNING_FAILED", "failed to allocate pinned GPU Memory"),
    (5037, "CU_FILE_BATCH_FULL", "queue full for batch operation"),
    (5038, "CU_FILE_ASYNC_NOT_SUPPORTED", "cuFile stream operation not supported"),
    # 5039..5049 appeared in libcufile 1.15; before, 5039 was CU_FILE_IO_MAX_ERROR.
    (5039, "CU_FILE_INTERNAL_BATCH_SETUP_ERROR", "batch setup internal error - retry later"),
    (5040, "CU_FILE_INTERNAL_BATCH_SUBMIT_ERROR", "batch submit internal error - retry later"),
    (5041, "CU_FILE_INTERNAL_BATCH_GETSTATUS_ERROR", "batch get status internal error - retry later"),
    (5042, "CU_FILE_INTERNAL_BATCH_CANCEL_ERROR", "batch cancel internal error - retry later"),
    (5043, "CU_FILE_NOMEM_ERROR", "cufile no memory error - retry later"),
    (5044, "CU_FILE_IO_ERROR", "cufile io error"),
    (5045, "CU_FILE_INTERNAL_BUF_REGISTER_ERROR", "cufile buf registration error"),
    (5046, "CU_FILE_HASH_OPR_ERROR", "cufile hash operation error"),
    (5047, "CU_FILE_INVALID_CONTEXT_ERROR", "cufile invalid context error"),
    (5048, "CU_FILE_NVFS_INTERNAL_DRIVER_ERROR", "nvfs internal driver error"),
    (5049, "CU_FILE_BATCH_NOCOMPAT_ERROR", "compat mode off error"),
    (5050, "CU_FILE_IO_MAX_ERROR", "GPUDirect Storage Max Error"),
)

CUfileOpError = IntEnum("CUfileOpError", [(name, code) for code, name, _ in CUFILEOP_STATUS_ENTRIES],
                        module=__name__)
CUfileOpError.__doc__ = "cufile.h `CUfileOpError`: status codes of CUfileError_t.err."


# --- the other enums ------------------------------------------------------------------------
class CUfileDriverStatusFlags_t(IntEnum):
    """Bit numbers of CUfileDrvProps_t.nvfs.dstatusflags (supported file systems and devices)."""

    CU_FILE_LUSTRE_SUPPORTED = 0
    CU_FILE_WEKAFS_SUPPORTED = 1
    CU_FILE_NFS_SUPPORTED = 2
    CU_FILE_GPFS_SUPPORTED = 3
    CU_FILE_NVME_SUPPORTED = 4
    CU_FILE_NVMEOF_SUPPORTED = 5
    CU_FILE_SCSI_SUPPORTED = 6
    CU_FILE_SCALEFLUX_CSD_SUPPORTED = 7
    CU_FILE_NVMESH_SUPPORTED = 8
    CU_FILE_BEEGFS_SUPPORTED = 9
    # 10 is reserved for YRCloudFile.
    CU_FILE_NVME_P2P_SUPPORTED = 11  # deprecated since 1.16
    CU_FILE_SCATEFS_SUPPORTED = 12  # 1.14+
    CU_FILE_VIRTIOFS_SUPPORTED = 13  # 1.16+
    CU_FILE_PANFS_SUPPORTED = 14  # 1.20+
    CU_FILE_MAX_TARGET_TYPES = 15  # 1.16+; it was 14 in 1.16-1.19


class CUfileDriverControlFlags_t(IntEnum):
    """Bit numbers of CUfileDrvProps_t.nvfs.dcontrolflags."""

    CU_FILE_USE_POLL_MODE = 0
    CU_FILE_ALLOW_COMPAT_MODE = 1
    CU_FILE_VANILLA_POSIX_IO_MODE = 2  # 1.19+ name; 1.17-1.18 called it CU_FILE_POSIX_IO_MODE
    CU_FILE_POSIX_IO_MODE = 2  # alias of CU_FILE_VANILLA_POSIX_IO_MODE
    CU_FILE_FALLBACK_IO_MODE = 4  # 1.17+


class CUfileFeatureFlags_t(IntEnum):
    """Bit numbers of CUfileDrvProps_t.fflags."""

    CU_FILE_DYN_ROUTING_SUPPORTED = 0
    CU_FILE_BATCH_IO_SUPPORTED = 1
    CU_FILE_STREAMS_SUPPORTED = 2
    CU_FILE_PARALLEL_IO_SUPPORTED = 3
    CU_FILE_P2P_SUPPORTED = 4  # 1.16+


class CUfileP2PFlags_t(IntEnum):
    """Bit numbers for cuFileDriverGet/SetP2PFlags (libcufile 1.16+)."""

    CUFILE_P2PDMA = 0
    CUFILE_NVFS = 1
    CUFILE_DMABUF = 2
    CUFILE_C2C = 3
    CUFILE_NVIDIA_PEERMEM = 4


CU_FILE_P2P_FLAG_PCI_P2PDMA = 1 << CUfileP2PFlags_t.CUFILE_P2PDMA
CU_FILE_P2P_FLAG_NVFS = 1 << CUfileP2PFlags_t.CUFILE_NVFS
CU_FILE_P2P_FLAG_DMABUF = 1 << CUfileP2PFlags_t.CUFILE_DMABUF
CU_FILE_P2P_FLAG_C2C = 1 << CUfileP2PFlags_t.CUFILE_C2C


class CUfileOpcode_t(IntEnum):
    CUFILE_READ = 0
    CUFILE_WRITE = 1


class CUfileFileHandleType(IntEnum):
    """`enum CUfileFileHandleType` (no typedef in the header): CUfileDescr_t.type."""

    CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1
    CU_FILE_HANDLE_TYPE_OPAQUE_WIN32 = 2
    CU_FILE_HANDLE_TYPE_USERSPACE_FS = 3


class CUfileStatus_t(IntEnum):
    """Status of one batch request (CUfileIOEvents_t.status); tag `CUFILEStatus_enum`."""

    CUFILE_WAITING = 0x01
    CUFILE_PENDING = 0x02
    CUFILE_INVALID = 0x04
    CUFILE_CANCELED = 0x08
    CUFILE_COMPLETE = 0x10
    CUFILE_TIMEOUT = 0x20
    CUFILE_FAILED = 0x40


class CUfileBatchMode_t(IntEnum):
    """CUfileIOParams_t.mode; must be CUFILE_BATCH (0 is rejected with 5040)."""

    CUFILE_BATCH = 1


class CUFileSizeTConfigParameter_t(IntEnum):
    """cuFileGet/SetParameterSizeT parameters (libcufile 1.14+)."""

    CUFILE_PARAM_PROFILE_STATS = 0
    CUFILE_PARAM_EXECUTION_MAX_IO_QUEUE_DEPTH = 1
    CUFILE_PARAM_EXECUTION_MAX_IO_THREADS = 2
    CUFILE_PARAM_EXECUTION_MIN_IO_THRESHOLD_SIZE_KB = 3
    CUFILE_PARAM_EXECUTION_MAX_REQUEST_PARALLELISM = 4
    CUFILE_PARAM_PROPERTIES_MAX_DIRECT_IO_SIZE_KB = 5
    CUFILE_PARAM_PROPERTIES_MAX_DEVICE_CACHE_SIZE_KB = 6
    CUFILE_PARAM_PROPERTIES_PER_BUFFER_CACHE_SIZE_KB = 7
    CUFILE_PARAM_PROPERTIES_MAX_DEVICE_PINNED_MEM_SIZE_KB = 8
    CUFILE_PARAM_PROPERTIES_IO_BATCHSIZE = 9
    CUFILE_PARAM_POLLTHRESHOLD_SIZE_KB = 10
    CUFILE_PARAM_PROPERTIES_BATCH_IO_TIMEOUT_MS = 11


class CUFileBoolConfigParameter_t(IntEnum):
    """cuFileGet/SetParameterBool parameters (libcufile 1.14+)."""

    CUFILE_PARAM_PROPERTIES_USE_POLL_MODE = 0
    CUFILE_PARAM_PROPERTIES_ALLOW_COMPAT_MODE = 1
    CUFILE_PARAM_FORCE_COMPAT_MODE = 2
    CUFILE_PARAM_FS_MISC_API_CHECK_AGGRESSIVE = 3
    CUFILE_PARAM_EXECUTION_PARALLEL_IO = 4
    CUFILE_PARAM_PROFILE_NVTX = 5  # deprecated
    CUFILE_PARAM_PROPERTIES_ALLOW_SYSTEM_MEMORY = 6
    CUFILE_PARAM_USE_PCIP2PDMA = 7
    CUFILE_PARAM_PREFER_IO_URING = 8
    CUFILE_PARAM_FORCE_ODIRECT_MODE = 9
    CUFILE_PARAM_SKIP_TOPOLOGY_DETECTION = 10
    CUFILE_PARAM_STREAM_MEMOPS_BYPASS = 11
    CUFILE_PARAM_PROPERTIES_POSIX_IO_MODE = 12  # 1.19+
    CUFILE_PARAM_GDS_FALLBACK_IO = 13  # 1.19+


class CUFileStringConfigParameter_t(IntEnum):
    """cuFileGet/SetParameterString parameters (libcufile 1.14+)."""

    CUFILE_PARAM_LOGGING_LEVEL = 0
    CUFILE_PARAM_ENV_LOGFILE_PATH = 1
    CUFILE_PARAM_LOG_DIR = 2
    CUFILE_PARAM_RDMA_TRANSPORT = 3  # 1.19+


class CUFileArrayConfigParameter_t(IntEnum):
    """Array parameters behind the *SlabArray calls (libcufile 1.15+; GPU bounce buffer 1.17+)."""

    CUFILE_PARAM_POSIX_POOL_SLAB_SIZE_KB = 0
    CUFILE_PARAM_POSIX_POOL_SLAB_COUNT = 1
    CUFILE_PARAM_GPU_BOUNCE_BUFFER_SLAB_SIZE_KB = 2
    CUFILE_PARAM_GPU_BOUNCE_BUFFER_SLAB_COUNT = 3


#: Every enum of cufile.h, by its Python (typedef) name.
ENUMS: dict[str, type[IntEnum]] = {
    e.__name__: e for e in (
        CUfileOpError, CUfileDriverStatusFlags_t, CUfileDriverControlFlags_t, CUfileFeatureFlags_t,
        CUfileP2PFlags_t, CUfileOpcode_t, CUfileFileHandleType, CUfileStatus_t, CUfileBatchMode_t,
        CUFileSizeTConfigParameter_t, CUFileBoolConfigParameter_t, CUFileStringConfigParameter_t,
        CUFileArrayConfigParameter_t)
}

# Enumerators as plain module-level ints with their C names (aliases included).
for _enum_type in ENUMS.values():
    for _name, _member in _enum_type.__members__.items():
        globals()[_name] = int(_member)
del _enum_type, _name, _member

#: Every object-like integer #define of cufile.h.
DEFINES: dict[str, int] = {
    name: globals()[name] for name in (
        "CUFILEOP_BASE_ERR", "CU_FILE_RDMA_REGISTER", "CU_FILE_RDMA_RELAXED_ORDERING",
        "CU_FILE_RDMA_ERR_BASE", "CU_FILE_RDMA_SUCCESS", "CU_FILE_RDMA_RESET_TOKEN",
        "CU_FILE_RDMA_RESET_TOKEN_FAILED", "CU_FILE_STREAM_FIXED_BUF_OFFSET",
        "CU_FILE_STREAM_FIXED_FILE_OFFSET", "CU_FILE_STREAM_FIXED_FILE_SIZE",
        "CU_FILE_STREAM_PAGE_ALIGNED_INPUTS", "CUFILE_GPU_UUID_LEN", "CU_FILE_P2P_FLAG_PCI_P2PDMA",
        "CU_FILE_P2P_FLAG_NVFS", "CU_FILE_P2P_FLAG_DMABUF", "CU_FILE_P2P_FLAG_C2C")
}


# --- structs and unions ---------------------------------------------------------------------
class CUfileError_t(ctypes.Structure):
    """Status returned by value by most cuFile calls: cuFile code and, for 5011, the CUDA error."""

    _fields_ = [("err", _enum), ("cu_err", CUresult)]


class _CUfileDrvPropsNvfs(ctypes.Structure):
    """The anonymous `struct nvfs` inside CUfileDrvProps_t."""

    _fields_ = [
        ("major_version", ctypes.c_uint),
        ("minor_version", ctypes.c_uint),
        ("poll_thresh_size", size_t),
        ("max_direct_io_size", size_t),
        ("dstatusflags", ctypes.c_uint),
        ("dcontrolflags", ctypes.c_uint),
    ]


class CUfileDrvProps_t(ctypes.Structure):
    _fields_ = [
        ("nvfs", _CUfileDrvPropsNvfs),
        ("fflags", ctypes.c_uint),
        ("max_device_cache_size", ctypes.c_uint),
        ("per_buffer_cache_size", ctypes.c_uint),
        ("max_device_pinned_mem_size", ctypes.c_uint),
        ("max_batch_io_size", ctypes.c_uint),
        ("max_batch_io_timeout_msecs", ctypes.c_uint),
    ]


class sockaddr_t(ctypes.Structure):
    """`typedef struct sockaddr sockaddr_t` (Linux layout)."""

    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_char * 14)]


class timespec(ctypes.Structure):
    """`struct timespec`, the timeout of cuFileBatchIOGetStatus."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class cufileRDMAInfo_t(ctypes.Structure):
    _fields_ = [("version", ctypes.c_int), ("desc_len", ctypes.c_int), ("desc_str", ctypes.c_char_p)]


# CUfileFSOps_t callbacks. `fs_type` returns `const char *`; it is declared as a void pointer
# because ctypes cannot return a C string from a Python callback safely.
CUfileFSOps_fs_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
CUfileFSOps_getRDMADeviceList = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(sockaddr_t)))
CUfileFSOps_getRDMADevicePriority = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), size_t, loff_t,
    ctypes.POINTER(sockaddr_t))
CUfileFSOps_read = ctypes.CFUNCTYPE(
    ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), size_t, loff_t,
    ctypes.POINTER(cufileRDMAInfo_t))
CUfileFSOps_write = ctypes.CFUNCTYPE(
    ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), size_t, loff_t,
    ctypes.POINTER(cufileRDMAInfo_t))


class CUfileFSOps_t(ctypes.Structure):
    """Operation table of a user-space file system (CU_FILE_HANDLE_TYPE_USERSPACE_FS)."""

    _fields_ = [
        ("fs_type", CUfileFSOps_fs_type),
        ("getRDMADeviceList", CUfileFSOps_getRDMADeviceList),
        ("getRDMADevicePriority", CUfileFSOps_getRDMADevicePriority),
        ("read", CUfileFSOps_read),
        ("write", CUfileFSOps_write),
    ]


class _CUfileDescrHandle(ctypes.Union):
    """The `handle` union of CUfileDescr_t; it holds a pointer, so it sits at offset 8."""

    _fields_ = [("fd", ctypes.c_int), ("handle", ctypes.c_void_p)]


class CUfileDescr_t(ctypes.Structure):
    _fields_ = [
        ("type", _enum),  # CUfileFileHandleType
        ("handle", _CUfileDescrHandle),
        ("fs_ops", ctypes.POINTER(CUfileFSOps_t)),
    ]


class _CUfileIOParamsBatch(ctypes.Structure):
    """`u.batch` of CUfileIOParams_t."""

    _fields_ = [
        ("devPtr_base", ctypes.c_void_p),
        ("file_offset", off_t),
        ("devPtr_offset", off_t),
        ("size", size_t),
    ]


class _CUfileIOParamsU(ctypes.Union):
    _fields_ = [("batch", _CUfileIOParamsBatch)]


class CUfileIOParams_t(ctypes.Structure):
    """One batch request; `mode` must be CUFILE_BATCH."""

    _fields_ = [
        ("mode", _enum),  # CUfileBatchMode_t
        ("u", _CUfileIOParamsU),
        ("fh", CUfileHandle_t),
        ("opcode", _enum),  # CUfileOpcode_t
        ("cookie", ctypes.c_void_p),
    ]


class CUfileIOEvents_t(ctypes.Structure):
    """One batch completion; `ret` is a size_t holding bytes done or a negative error."""

    _fields_ = [
        ("cookie", ctypes.c_void_p),
        ("status", _enum),  # CUfileStatus_t
        ("ret", size_t),
    ]


class CUfileIOVec_t(ctypes.Structure):
    """cuFileReadv/cuFileWritev segment (libcufile 1.19+)."""

    _fields_ = [("base", ctypes.c_void_p), ("len", size_t)]


class CUfileOpCounter_t(ctypes.Structure):
    _fields_ = [("ok", ctypes.c_uint64), ("err", ctypes.c_uint64)]


_u64 = ctypes.c_uint64
_counter = CUfileOpCounter_t

_STATS_L1_FIELDS: list[tuple[str, type]] = [
    ("read_ops", _counter), ("write_ops", _counter), ("hdl_register_ops", _counter),
    ("hdl_deregister_ops", _counter), ("buf_register_ops", _counter), ("buf_deregister_ops", _counter),
    ("read_bytes", _u64), ("write_bytes", _u64), ("read_bw_bytes_per_sec", _u64),
    ("write_bw_bytes_per_sec", _u64), ("read_lat_avg_us", _u64), ("write_lat_avg_us", _u64),
    ("read_ops_per_sec", _u64), ("write_ops_per_sec", _u64),
    ("read_lat_sum_us", _u64), ("write_lat_sum_us", _u64),
    ("batch_submit_ops", _counter), ("batch_complete_ops", _counter), ("batch_setup_ops", _counter),
    ("batch_cancel_ops", _counter), ("batch_destroy_ops", _counter),
    ("batch_enqueued_ops", _counter), ("batch_posix_enqueued_ops", _counter),
    ("batch_processed_ops", _counter), ("batch_posix_processed_ops", _counter),
    ("batch_nvfs_submit_ops", _counter), ("batch_p2p_submit_ops", _counter),
    ("batch_aio_submit_ops", _counter), ("batch_iouring_submit_ops", _counter),
    ("batch_mixed_io_submit_ops", _counter), ("batch_total_submit_ops", _counter),
    ("batch_read_bytes", _u64), ("batch_write_bytes", _u64), ("batch_read_bw_bytes", _u64),
    ("batch_write_bw_bytes", _u64), ("batch_submit_lat_avg_us", _u64),
    ("batch_completion_lat_avg_us", _u64), ("batch_submit_ops_per_sec", _u64),
    ("batch_complete_ops_per_sec", _u64), ("batch_submit_lat_sum_us", _u64),
    ("batch_completion_lat_sum_us", _u64), ("last_batch_read_bytes", _u64),
    ("last_batch_write_bytes", _u64),
]

# Added at the end of CUfileStatsLevel1_t in libcufile 1.19.
_STATS_L1_VECTOR_IO_FIELDS: list[tuple[str, type]] = [
    ("readv_ops", _counter), ("writev_ops", _counter), ("readv_bytes", _u64), ("writev_bytes", _u64),
    ("readv_bw_bytes_per_sec", _u64), ("writev_bw_bytes_per_sec", _u64),
    ("readv_lat_avg_us", _u64), ("writev_lat_avg_us", _u64),
    ("readv_ops_per_sec", _u64), ("writev_ops_per_sec", _u64),
    ("readv_lat_sum_us", _u64), ("writev_lat_sum_us", _u64),
]


class CUfileStatsLevel1_t(ctypes.Structure):
    """Level 1 statistics (libcufile 1.19+ layout)."""

    _fields_ = _STATS_L1_FIELDS + _STATS_L1_VECTOR_IO_FIELDS


class CUfileStatsLevel2_t(ctypes.Structure):
    _fields_ = [
        ("basic", CUfileStatsLevel1_t),
        ("read_size_kb_hist", _u64 * 32),
        ("write_size_kb_hist", _u64 * 32),
    ]


class CUfilePerGpuStats_t(ctypes.Structure):
    _fields_ = [("uuid", ctypes.c_char * CUFILE_GPU_UUID_LEN)] + [(name, _u64) for name in (
        "read_bytes", "read_bw_bytes_per_sec", "read_utilization", "read_duration_us",
        "n_total_reads", "n_p2p_reads", "n_nvfs_reads", "n_posix_reads", "n_unaligned_reads",
        "n_dr_reads", "n_sparse_regions", "n_inline_regions", "n_reads_err",
        "writes_bytes", "write_bw_bytes_per_sec", "write_utilization", "write_duration_us",
        "n_total_writes", "n_p2p_writes", "n_nvfs_writes", "n_posix_writes", "n_unaligned_writes",
        "n_dr_writes", "n_writes_err",
        "n_mmap", "n_mmap_ok", "n_mmap_err", "n_mmap_free", "reg_bytes")]


class CUfileStatsLevel3_t(ctypes.Structure):
    _fields_ = [
        ("detailed", CUfileStatsLevel2_t),
        ("num_gpus", ctypes.c_uint32),
        ("per_gpu_stats", CUfilePerGpuStats_t * 16),
    ]


class CUfileStatsLevel1_v1150_t(ctypes.Structure):
    """Level 1 statistics as libcufile 1.15-1.18 lay them out (no readv/writev counters)."""

    _fields_ = list(_STATS_L1_FIELDS)


class CUfileStatsLevel2_v1150_t(ctypes.Structure):
    _fields_ = [
        ("basic", CUfileStatsLevel1_v1150_t),
        ("read_size_kb_hist", _u64 * 32),
        ("write_size_kb_hist", _u64 * 32),
    ]


class CUfileStatsLevel3_v1150_t(ctypes.Structure):
    _fields_ = [
        ("detailed", CUfileStatsLevel2_v1150_t),
        ("num_gpus", ctypes.c_uint32),
        ("per_gpu_stats", CUfilePerGpuStats_t * 16),
    ]


#: (lowest libcufile version, Level1, Level2, Level3 struct), newest first: use the first row whose
#: version is <= the loaded library's. Statistics calls do not exist before 1.15.
STATS_LAYOUTS: tuple[tuple[int, type[ctypes.Structure], type[ctypes.Structure], type[ctypes.Structure]], ...] = (
    (1190, CUfileStatsLevel1_t, CUfileStatsLevel2_t, CUfileStatsLevel3_t),
    (1150, CUfileStatsLevel1_v1150_t, CUfileStatsLevel2_v1150_t, CUfileStatsLevel3_v1150_t),
)

#: Every struct and union of cufile.h (and the two system ones its prototypes use), by C type name.
STRUCTS: dict[str, type[ctypes.Structure] | type[ctypes.Union]] = {
    "CUfileError_t": CUfileError_t,
    "CUfileDrvProps_t": CUfileDrvProps_t,
    "sockaddr_t": sockaddr_t,
    "struct timespec": timespec,
    "cufileRDMAInfo_t": cufileRDMAInfo_t,
    "CUfileFSOps_t": CUfileFSOps_t,
    "CUfileDescr_t": CUfileDescr_t,
    "CUfileIOParams_t": CUfileIOParams_t,
    "CUfileIOEvents_t": CUfileIOEvents_t,
    "CUfileIOVec_t": CUfileIOVec_t,
    "CUfileOpCounter_t": CUfileOpCounter_t,
    "CUfileStatsLevel1_t": CUfileStatsLevel1_t,
    "CUfileStatsLevel2_t": CUfileStatsLevel2_t,
    "CUfilePerGpuStats_t": CUfilePerGpuStats_t,
    "CUfileStatsLevel3_t": CUfileStatsLevel3_t,
}

# --- function prototypes --------------------------------------------------------------------
_P = ctypes.POINTER
_void_p = ctypes.c_void_p
_int = ctypes.c_int
_uint = ctypes.c_uint
_err = CUfileError_t

#: name -> (restype, argtypes) for every function of cufile.h. `cuFileDriverClose` is #defined to
#: `cuFileDriverClose_v2` by the header; libcufile exports both, call the _v2 one.
PROTOTYPES: dict[str, tuple[type | None, list[type]]] = {
    "cuFileHandleRegister": (_err, [_P(CUfileHandle_t), _P(CUfileDescr_t)]),
    "cuFileHandleDeregister": (None, [CUfileHandle_t]),
    "cuFileBufRegister": (_err, [_void_p, size_t, _int]),
    "cuFileBufDeregister": (_err, [_void_p]),
    "cuFileRead": (ssize_t, [CUfileHandle_t, _void_p, size_t, off_t, off_t]),
    "cuFileWrite": (ssize_t, [CUfileHandle_t, _void_p, size_t, off_t, off_t]),
    "cuFileDriverOpen": (_err, []),
    "cuFileDriverClose": (_err, []),
    "cuFileDriverClose_v2": (_err, []),
    "cuFileUseCount": (ctypes.c_long, []),
    "cuFileDriverGetProperties": (_err, [_P(CUfileDrvProps_t)]),
    "cuFileDriverSetPollMode": (_err, [ctypes.c_bool, size_t]),
    "cuFileDriverSetMaxDirectIOSize": (_err, [size_t]),
    "cuFileDriverSetMaxCacheSize": (_err, [size_t]),
    "cuFileDriverSetMaxPinnedMemSize": (_err, [size_t]),
    "cuFileBatchIOSetUp": (_err, [_P(CUfileBatchHandle_t), _uint]),
    "cuFileBatchIOSubmit": (_err, [CUfileBatchHandle_t, _uint, _P(CUfileIOParams_t), _uint]),
    "cuFileBatchIOGetStatus": (_err, [CUfileBatchHandle_t, _uint, _P(_uint), _P(CUfileIOEvents_t),
                                      _P(timespec)]),
    "cuFileBatchIOCancel": (_err, [CUfileBatchHandle_t]),
    "cuFileBatchIODestroy": (None, [CUfileBatchHandle_t]),
    "cuFileReadAsync": (_err, [CUfileHandle_t, _void_p, _P(size_t), _P(off_t), _P(off_t), _P(ssize_t),
                               CUstream]),
    "cuFileWriteAsync": (_err, [CUfileHandle_t, _void_p, _P(size_t), _P(off_t), _P(off_t), _P(ssize_t),
                                CUstream]),
    "cuFileStreamRegister": (_err, [CUstream, _uint]),
    "cuFileStreamDeregister": (_err, [CUstream]),
    "cuFileReadv": (ssize_t, [CUfileHandle_t, _P(CUfileIOVec_t), size_t, off_t, _uint]),
    "cuFileWritev": (ssize_t, [CUfileHandle_t, _P(CUfileIOVec_t), size_t, off_t, _uint]),
    "cuFileGetVersion": (_err, [_P(_int)]),
    "cuFileExportPCIeTopology": (_err, [ctypes.c_char_p]),
    "cuFileGetParameterSizeT": (_err, [_enum, _P(size_t)]),
    "cuFileGetParameterBool": (_err, [_enum, _P(ctypes.c_bool)]),
    "cuFileGetParameterString": (_err, [_enum, ctypes.c_char_p, _int]),
    "cuFileGetParameterMinMaxValue": (_err, [_enum, _P(size_t), _P(size_t)]),
    "cuFileSetParameterSizeT": (_err, [_enum, size_t]),
    "cuFileSetParameterBool": (_err, [_enum, ctypes.c_bool]),
    "cuFileSetParameterString": (_err, [_enum, ctypes.c_char_p]),
    "cuFileSetStatsLevel": (_err, [_int]),
    "cuFileGetStatsLevel": (_err, [_P(_int)]),
    "cuFileStatsStart": (_err, []),
    "cuFileStatsStop": (_err, []),
    "cuFileStatsReset": (_err, []),
    # The stats getters take a pointer to the layout of STATS_LAYOUTS matching the library.
    "cuFileGetStatsL1": (_err, [_void_p]),
    "cuFileGetStatsL2": (_err, [_void_p]),
    "cuFileGetStatsL3": (_err, [_void_p]),
    "cuFileGetBARSizeInKB": (_err, [_int, _P(size_t)]),
    "cuFileSetParameterPosixPoolSlabArray": (_err, [_P(size_t), _P(size_t), _int]),
    "cuFileGetParameterPosixPoolSlabArray": (_err, [_P(size_t), _P(size_t), _int]),
    "cuFileSetParameterGpuBounceBufferSlabArray": (_err, [_P(size_t), _P(size_t), _int]),
    "cuFileGetParameterGpuBounceBufferSlabArray": (_err, [_P(size_t), _P(size_t), _int]),
    "cuFileDriverGetP2PFlags": (_err, [_enum, _P(_enum)]),
    "cuFileDriverSetP2PFlags": (_err, [_enum, _enum]),
}

#: The first libcufile version (cuFileGetVersion value) that exports each function, read from the
#: exported symbols of the nvidia-cufile(-cu12) wheels 1.11, 1.13-1.20 (1.11 is the oldest wheel;
#: 1110 means "1.11 or older").
FUNCTION_SINCE: dict[str, int] = {
    **{name: 1110 for name in (
        "cuFileHandleRegister", "cuFileHandleDeregister", "cuFileBufRegister", "cuFileBufDeregister",
        "cuFileRead", "cuFileWrite", "cuFileDriverOpen", "cuFileDriverClose", "cuFileDriverClose_v2",
        "cuFileUseCount", "cuFileDriverGetProperties", "cuFileDriverSetPollMode",
        "cuFileDriverSetMaxDirectIOSize", "cuFileDriverSetMaxCacheSize", "cuFileDriverSetMaxPinnedMemSize",
        "cuFileBatchIOSetUp", "cuFileBatchIOSubmit", "cuFileBatchIOGetStatus", "cuFileBatchIOCancel",
        "cuFileBatchIODestroy", "cuFileReadAsync", "cuFileWriteAsync", "cuFileStreamRegister",
        "cuFileStreamDeregister", "cuFileGetVersion")},
    **{name: 1140 for name in (
        "cuFileGetParameterSizeT", "cuFileGetParameterBool", "cuFileGetParameterString",
        "cuFileSetParameterSizeT", "cuFileSetParameterBool", "cuFileSetParameterString")},
    **{name: 1150 for name in (
        "cuFileGetParameterMinMaxValue", "cuFileSetStatsLevel", "cuFileGetStatsLevel", "cuFileStatsStart",
        "cuFileStatsStop", "cuFileStatsReset", "cuFileGetStatsL1", "cuFileGetStatsL2", "cuFileGetStatsL3",
        "cuFileGetBARSizeInKB", "cuFileSetParameterPosixPoolSlabArray",
        "cuFileGetParameterPosixPoolSlabArray")},
    **{name: 1160 for name in ("cuFileDriverGetP2PFlags", "cuFileDriverSetP2PFlags")},
    **{name: 1170 for name in (
        "cuFileExportPCIeTopology", "cuFileSetParameterGpuBounceBufferSlabArray",
        "cuFileGetParameterGpuBounceBufferSlabArray")},
    **{name: 1190 for name in ("cuFileReadv", "cuFileWritev")},
}
