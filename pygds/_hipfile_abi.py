"""The hipFile ABI of `hipfile.h` (AMD hipFile 0.2 to 0.5, ROCm 7.2+) as ctypes, name for name.

Declarations only: loading the library and calling it live in `_lib.py`, decoding errors in
`errors.py`. `tests/test_hipfile_abi.py` compiles a C probe (against an installed hipfile.h when
there is one, else against a C transcription of the header) and checks every size, offset, enum
value and constant declared here.

Naming follows `_cufile_abi`: structs carry their C typedef names (`hipFileDescr_t`), every enum is
an `IntEnum` named after its typedef with every enumerator also a module-level `int`, every integer
`#define` is a module-level `int`, and `PROTOTYPES[name] = (restype, argtypes)`.

hipFile mirrors cuFile closely: the same error numbers (5000 + n), the same struct layouts for
the descriptor, batch parameters and events, and the same parameter enums in the same order. It
differs where a caller notices: the version comes as three unsigned ints, the driver properties
use 64-bit sizes, errors carry a `hipError_t`, and many driver and parameter calls are declared but
not implemented (they return hipFileInternalError; `NOT_IMPLEMENTED` lists them).
"""
from __future__ import annotations

import ctypes
from enum import IntEnum

# --- basic C types --------------------------------------------------------------------------
hipError_t = ctypes.c_int  # enum hipError_t in hip_runtime_api.h
hipStream_t = ctypes.c_void_p  # struct ihipStream_t *
hoff_t = ctypes.c_int64  # off_t on LP64 Linux
ssize_t = ctypes.c_ssize_t
size_t = ctypes.c_size_t
_enum = ctypes.c_int  # every hipfile.h enum fits in an int

hipFileHandle_t = ctypes.c_void_p
hipFileBatchHandle_t = ctypes.c_void_p

# --- #define constants --------------------------------------------------------------------
#: The version of the header this module transcribes; the loaded library reports its own.
HIPFILE_VERSION_MAJOR = 0
HIPFILE_VERSION_MINOR = 2
HIPFILE_VERSION_PATCH = 0

HIPFILE_BASE_ERR = 5000

HIPFILE_RDMA_REGISTER = 1
HIPFILE_RDMA_RELAXED_ORDERING = 1 << 1

HIPFILE_STREAM_FIXED_BUF_OFFSET = 1
HIPFILE_STREAM_FIXED_FILE_OFFSET = 1 << 1
HIPFILE_STREAM_FIXED_FILE_SIZE = 1 << 2
HIPFILE_STREAM_PAGE_ALIGNED_INPUTS = 1 << 3
HIPFILE_STREAM_FLAGS_MASK = 0xF

HIPFILE_MAX_GPUS = 16
HIPFILE_GPU_UUID_LEN = 16

# --- hipFileOpError ------------------------------------------------------------------------
#: (code, C name, hipFileGetOpErrorString's text). 5021 and 5032 are unused, as in cufile.h.
HIPFILE_OP_ERRORS: tuple[tuple[int, str, str], ...] = (
    (0, "hipFileSuccess", "hipFile success"),
    (5001, "hipFileDriverNotInitialized", "GPU IO driver is not loaded"),
    (5002, "hipFileDriverInvalidProps", "Invalid GPU IO driver property provided"),
    (5003, "hipFileDriverUnsupportedLimit", "GPU IO Driver property value is unsupported"),
    (5004, "hipFileDriverVersionMismatch", "hipFile version does not match GPU IO driver version"),
    (5005, "hipFileDriverVersionReadError", "Unable to read the GPU IO driver version"),
    (5006, "hipFileDriverClosing", "GPU IO driver is closing and not accepting new requests"),
    (5007, "hipFilePlatformNotSupported", "hipFile is not supported on the current platform"),
    (5008, "hipFileIONotSupported", "hipFile is not supported on the selected file"),
    (5009, "hipFileDeviceNotSupported", "The selected GPU does not support hipFile"),
    (5010, "hipFileDriverError", "GPU IO driver error"),
    (5011, "hipFileHipDriverError", "GPU driver error: Inspect hip_drv_err for additional information"),
    (5012, "hipFileHipPointerInvalid", "Invalid GPU pointer"),
    (5013, "hipFileHipMemoryTypeInvalid", "Memory type backing pointer is incompatible with hipFile"),
    (5014, "hipFileHipPointerRangeError", "Pointer range exceeds allocated memory region"),
    (5015, "hipFileHipContextMismatch", "GPU driver context mismatch"),
    (5016, "hipFileInvalidMappingSize", "Accessing memory beyond pinned memory buffer"),
    (5017, "hipFileInvalidMappingRange", "Accessing memory beyond mapped memory region"),
    (5018, "hipFileInvalidFileType", "Unsupported file type"),
    (5019, "hipFileInvalidFileOpenFlag", "Unsupported file open flags"),
    (5020, "hipFileDIONotSet", "O_DIRECT flag not set"),
    (5022, "hipFileInvalidValue", "One or more arguments have an invalid value"),
    (5023, "hipFileMemoryAlreadyRegistered", "Device pointer is already registered"),
    (5024, "hipFileMemoryNotRegistered", "Device pointer is not registered"),
    (5025, "hipFilePermissionDenied", "Permission error on device or file access"),
    (5026, "hipFileDriverAlreadyOpen", "GPU IO driver is already open"),
    (5027, "hipFileHandleNotRegistered", "File handle for GPU IO is not registered"),
    (5028, "hipFileHandleAlreadyRegistered", "File handle for GPU IO is already registered"),
    (5029, "hipFileDeviceNotFound", "Selected device not found"),
    (5030, "hipFileInternalError", "Internal GPU IO library error"),
    (5031, "hipFileGetNewFDFailed", "Unable to obtain a new file descriptor"),
    (5033, "hipFileDriverSetupError", "GPU IO Driver initialization error"),
    (5034, "hipFileIODisabled", "GPU IO config file prohibits GPU IO on specified file"),
    (5035, "hipFileBatchSubmitFailed", "Failed to submit request for batch operation"),
    (5036, "hipFileGPUMemoryPinningFailed", "Failed to allocated pinned device memory"),
    (5037, "hipFileBatchFull", "Batch operation queue is full"),
    (5038, "hipFileAsyncNotSupported", "hipFile async IO is not supported"),
    (5039, "hipFileIOMaxError", "Internal flag to mark largest hipFile error code"),
)

hipFileOpError = IntEnum("hipFileOpError", [(name, code) for code, name, _ in HIPFILE_OP_ERRORS],
                         module=__name__)
hipFileOpError.__doc__ = "hipfile.h `hipFileOpError_t`: status codes of hipFileError_t.err."


# --- the other enums ------------------------------------------------------------------------
class hipFileDriverStatusFlags_t(IntEnum):
    """Bit numbers of hipFileDriverProps_t.nvfs.driver_status_flags (10 is reserved)."""

    hipFileLustreSupported = 0
    hipFileWekaFSSupported = 1
    hipFileNFSSupported = 2
    hipFileGPFSSupported = 3
    hipFileNVMeSupported = 4
    hipFileNVMeoFSupported = 5
    hipFileSCSISupported = 6
    hipFileScaleFluxCSDSupported = 7
    hipFileNVMeshSupported = 8
    hipFileBeeGFSSupported = 9
    hipFileNVMeP2PSupported = 11
    hipFileScatefsSupported = 12


class hipFileDriverControlFlags_t(IntEnum):
    """Bit numbers of hipFileDriverProps_t.nvfs.driver_control_flags."""

    hipFileUsePollMode = 0
    hipFileAllowCompatMode = 1


class hipFileFeatureFlags_t(IntEnum):
    """Bit numbers of hipFileDriverProps_t.feature_flags."""

    hipFileDynRoutingSupported = 0
    hipFileBatchIOSupported = 1
    hipFileStreamsSupported = 2
    hipFileParallelIOSupported = 3


class hipFileFileHandleType_t(IntEnum):
    """hipFileDescr_t.type; hipFile registers only OpaqueFD (the others give hipFileIONotSupported)."""

    hipFileHandleTypeOpaqueFD = 1
    hipFileHandleTypeOpaqueWin32 = 2
    hipFileHandleTypeUserspaceFS = 3


class hipFileOpcode_t(IntEnum):
    hipFileBatchRead = 0
    hipFileBatchWrite = 1


class hipFileStatus_t(IntEnum):
    """Status of one batch request (hipFileIOEvents_t.status)."""

    hipFileWaiting = 1 << 0
    hipFilePending = 1 << 1
    hipFileInvalid = 1 << 2
    hipFileCanceled = 1 << 3
    hipFileComplete = 1 << 4
    hipFileTimeout = 1 << 5
    hipFileFailed = 1 << 6


class hipFileBatchMode_t(IntEnum):
    hipFileBatch = 1


class hipFileSizeTConfigParameter_t(IntEnum):
    """hipFileGet/SetParameterSizeT parameters (cuFile's size_t parameters, same order)."""

    hipFileParamProfileStats = 0
    hipFileParamExecutionMaxIOQueueDepth = 1
    hipFileParamExecutionMaxIOThreads = 2
    hipFileParamExecutionMinIOThresholdSizeKB = 3
    hipFileParamExecutionMaxRequestParallelism = 4
    hipFileParamPropertiesMaxDirectIOSizeKB = 5
    hipFileParamPropertiesMaxDeviceCacheSizeKB = 6
    hipFileParamPropertiesPerBufferCacheSizeKB = 7
    hipFileParamPropertiesMaxDevicePinnedMemSizeKB = 8
    hipFileParamPropertiesIOBatchsize = 9
    hipFileParamPollthresholdSizeKB = 10
    hipFileParamPropertiesBatchIOTimeoutMs = 11


class hipFileBoolConfigParameter_t(IntEnum):
    """hipFileGet/SetParameterBool parameters (cuFile's first twelve, same order)."""

    hipFileParamPropertiesUsePollMode = 0
    hipFileParamPropertiesAllowCompatMode = 1
    hipFileParamForceCompatMode = 2
    hipFileParamFsMiscApiCheckAggressive = 3
    hipFileParamExecutionParallelIO = 4
    hipFileParamProfileNvtx = 5
    hipFileParamPropertiesAllowSystemMemory = 6
    hipFileParamUsePcip2pdma = 7
    hipFileParamPreferIOUring = 8
    hipFileParamForceOdirectMode = 9
    hipFileParamSkipTopologyDetection = 10
    hipFileParamStreamMemopsBypass = 11


class hipFileStringConfigParameter_t(IntEnum):
    """hipFileGet/SetParameterString parameters (cuFile's first three, same order)."""

    hipFileParamLoggingLevel = 0
    hipFileParamEnvLogfilePath = 1
    hipFileParamLogDir = 2


#: Every enum of hipfile.h, by its typedef name.
ENUMS: dict[str, type[IntEnum]] = {
    e.__name__: e for e in (
        hipFileOpError, hipFileDriverStatusFlags_t, hipFileDriverControlFlags_t, hipFileFeatureFlags_t,
        hipFileFileHandleType_t, hipFileOpcode_t, hipFileStatus_t, hipFileBatchMode_t,
        hipFileSizeTConfigParameter_t, hipFileBoolConfigParameter_t, hipFileStringConfigParameter_t)
}

for _enum_type in ENUMS.values():
    for _name, _member in _enum_type.__members__.items():
        globals()[_name] = int(_member)
del _enum_type, _name, _member

#: Every object-like integer #define of hipfile.h.
DEFINES: dict[str, int] = {
    name: globals()[name] for name in (
        "HIPFILE_VERSION_MAJOR", "HIPFILE_VERSION_MINOR", "HIPFILE_VERSION_PATCH", "HIPFILE_BASE_ERR",
        "HIPFILE_RDMA_REGISTER", "HIPFILE_RDMA_RELAXED_ORDERING", "HIPFILE_STREAM_FIXED_BUF_OFFSET",
        "HIPFILE_STREAM_FIXED_FILE_OFFSET", "HIPFILE_STREAM_FIXED_FILE_SIZE",
        "HIPFILE_STREAM_PAGE_ALIGNED_INPUTS", "HIPFILE_STREAM_FLAGS_MASK", "HIPFILE_MAX_GPUS",
        "HIPFILE_GPU_UUID_LEN")
}


# --- structs and unions ---------------------------------------------------------------------
class hipFileError_t(ctypes.Structure):
    """Status returned by value: the hipFile code and, for 5011, the HIP runtime error."""

    _fields_ = [("err", _enum), ("hip_drv_err", hipError_t)]


class _hipFileDriverPropsNvfs(ctypes.Structure):
    """The anonymous `nvfs` struct inside hipFileDriverProps_t."""

    _fields_ = [
        ("major_version", ctypes.c_uint),
        ("minor_version", ctypes.c_uint),
        ("poll_thresh_size", ctypes.c_uint64),
        ("max_direct_io_size", ctypes.c_uint64),
        ("driver_status_flags", ctypes.c_uint),
        ("driver_control_flags", ctypes.c_uint),
    ]


class hipFileDriverProps_t(ctypes.Structure):
    """Driver properties; unlike CUfileDrvProps_t the three memory sizes are 64-bit."""

    _fields_ = [
        ("nvfs", _hipFileDriverPropsNvfs),
        ("feature_flags", ctypes.c_uint),
        ("max_device_cache_size", ctypes.c_uint64),
        ("per_buffer_cache_size", ctypes.c_uint64),
        ("max_device_pinned_mem_size", ctypes.c_uint64),
        ("max_batch_io_count", ctypes.c_uint),
        ("max_batch_io_timeout_msecs", ctypes.c_uint),
    ]


class hipFileRDMAInfo_t(ctypes.Structure):
    _fields_ = [("version", ctypes.c_int), ("desc_len", ctypes.c_int), ("desc_str", ctypes.c_char_p)]


class sockaddr(ctypes.Structure):
    """`struct sockaddr` (Linux layout), used by the RDMA callbacks."""

    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_char * 14)]


class timespec(ctypes.Structure):
    """`struct timespec`, the timeout of hipFileBatchIOGetStatus."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


# hipFileFSOps_t callbacks; `fs_type` returns `const char *`, declared as a void pointer because a
# Python callback cannot return a C string safely.
hipFileFSOps_fs_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
hipFileFSOps_getRDMADeviceList = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(sockaddr)))
hipFileFSOps_getRDMADevicePriority = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), size_t, hoff_t, ctypes.POINTER(sockaddr))
hipFileFSOps_read = ctypes.CFUNCTYPE(
    ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), size_t, hoff_t, ctypes.POINTER(hipFileRDMAInfo_t))
hipFileFSOps_write = ctypes.CFUNCTYPE(
    ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), size_t, hoff_t, ctypes.POINTER(hipFileRDMAInfo_t))


class hipFileFSOps_t(ctypes.Structure):
    """Operation table of a user-space RDMA file system (hipFile does not accept one yet)."""

    _fields_ = [
        ("fs_type", hipFileFSOps_fs_type),
        ("getRDMADeviceList", hipFileFSOps_getRDMADeviceList),
        ("getRDMADevicePriority", hipFileFSOps_getRDMADevicePriority),
        ("read", hipFileFSOps_read),
        ("write", hipFileFSOps_write),
    ]


class _hipFileDescrHandle(ctypes.Union):
    """The `handle` union of hipFileDescr_t; it holds a pointer, so it sits at offset 8."""

    _fields_ = [("fd", ctypes.c_int), ("hFile", ctypes.c_void_p)]


class hipFileDescr_t(ctypes.Structure):
    _fields_ = [
        ("type", _enum),  # hipFileFileHandleType_t
        ("handle", _hipFileDescrHandle),
        ("fs_ops", ctypes.POINTER(hipFileFSOps_t)),
    ]


class _hipFileIOParamsBatch(ctypes.Structure):
    """`u.batch` of hipFileIOParams_t."""

    _fields_ = [
        ("devPtr_base", ctypes.c_void_p),
        ("file_offset", ctypes.c_int64),
        ("devPtr_offset", ctypes.c_int64),
        ("size", size_t),
    ]


class _hipFileIOParamsU(ctypes.Union):
    _fields_ = [("batch", _hipFileIOParamsBatch)]


class hipFileIOParams_t(ctypes.Structure):
    """One batch request; `mode` must be hipFileBatch."""

    _fields_ = [
        ("mode", _enum),  # hipFileBatchMode_t
        ("u", _hipFileIOParamsU),
        ("fh", hipFileHandle_t),
        ("opcode", _enum),  # hipFileOpcode_t
        ("cookie", ctypes.c_void_p),
    ]


class hipFileIOEvents_t(ctypes.Structure):
    """One batch completion; `ret` is a size_t holding bytes done or a negative error."""

    _fields_ = [
        ("cookie", ctypes.c_void_p),
        ("status", _enum),  # hipFileStatus_t
        ("ret", size_t),
    ]


class hipFileOpCounter_t(ctypes.Structure):
    _fields_ = [("ok", ctypes.c_uint64), ("err", ctypes.c_uint64)]


_u64 = ctypes.c_uint64
_counter = hipFileOpCounter_t


class hipFileStatsLevel1_t(ctypes.Structure):
    """Level 1 statistics (hipFile 0.5+); untracked fields read zero. Same layout as cuFile 1.15-1.18."""

    _fields_ = [
        ("read_ops", _counter), ("write_ops", _counter), ("hdl_register_ops", _counter),
        ("hdl_deregister_ops", _counter), ("buf_register_ops", _counter), ("buf_deregister_ops", _counter),
        ("read_bytes", _u64), ("write_bytes", _u64), ("read_bw_bytes_per_sec", _u64),
        ("write_bw_bytes_per_sec", _u64), ("read_lat_avg_us", _u64), ("write_lat_avg_us", _u64),
        ("read_ops_per_sec", _u64), ("write_ops_per_sec", _u64),
        ("read_lat_sum_us", _u64), ("write_lat_sum_us", _u64),
        ("batch_submit_ops", _counter), ("batch_complete_ops", _counter), ("batch_setup_ops", _counter),
        ("batch_cancel_ops", _counter), ("batch_destroy_ops", _counter), ("batch_enqueued_ops", _counter),
        ("batch_posix_enqueued_ops", _counter), ("batch_processed_ops", _counter),
        ("batch_posix_processed_ops", _counter), ("batch_nvfs_submit_ops", _counter),
        ("batch_p2p_submit_ops", _counter), ("batch_aio_submit_ops", _counter),
        ("batch_iouring_submit_ops", _counter), ("batch_mixed_io_submit_ops", _counter),
        ("batch_total_submit_ops", _counter),
        ("batch_read_bytes", _u64), ("batch_write_bytes", _u64), ("batch_read_bw_bytes", _u64),
        ("batch_write_bw_bytes", _u64), ("batch_submit_lat_avg_us", _u64),
        ("batch_completion_lat_avg_us", _u64), ("batch_submit_ops_per_sec", _u64),
        ("batch_complete_ops_per_sec", _u64), ("batch_submit_lat_sum_us", _u64),
        ("batch_completion_lat_sum_us", _u64), ("last_batch_read_bytes", _u64),
        ("last_batch_write_bytes", _u64),
    ]


class hipFileStatsLevel2_t(ctypes.Structure):
    _fields_ = [
        ("basic", hipFileStatsLevel1_t),
        ("read_size_kb_hist", _u64 * 32),
        ("write_size_kb_hist", _u64 * 32),
    ]


class hipFilePerGpuStats_t(ctypes.Structure):
    """Per-GPU statistics; note `write_bytes` where cuFile says `writes_bytes`."""

    _fields_ = [("uuid", ctypes.c_char * HIPFILE_GPU_UUID_LEN)] + [(name, _u64) for name in (
        "read_bytes", "read_bw_bytes_per_sec", "read_utilization", "read_duration_us",
        "n_total_reads", "n_p2p_reads", "n_nvfs_reads", "n_posix_reads", "n_unaligned_reads",
        "n_dr_reads", "n_sparse_regions", "n_inline_regions", "n_reads_err",
        "write_bytes", "write_bw_bytes_per_sec", "write_utilization", "write_duration_us",
        "n_total_writes", "n_p2p_writes", "n_nvfs_writes", "n_posix_writes", "n_unaligned_writes",
        "n_dr_writes", "n_writes_err",
        "n_mmap", "n_mmap_ok", "n_mmap_err", "n_mmap_free", "reg_bytes")]


class hipFileStatsLevel3_t(ctypes.Structure):
    _fields_ = [
        ("detailed", hipFileStatsLevel2_t),
        ("num_gpus", ctypes.c_uint32),
        ("per_gpu_stats", hipFilePerGpuStats_t * HIPFILE_MAX_GPUS),
    ]


#: Every struct and union of hipfile.h (and the two system ones its prototypes use), by C type name.
STRUCTS: dict[str, type[ctypes.Structure] | type[ctypes.Union]] = {
    "hipFileError_t": hipFileError_t,
    "hipFileDriverProps_t": hipFileDriverProps_t,
    "hipFileRDMAInfo_t": hipFileRDMAInfo_t,
    "struct sockaddr": sockaddr,
    "struct timespec": timespec,
    "hipFileFSOps_t": hipFileFSOps_t,
    "hipFileDescr_t": hipFileDescr_t,
    "hipFileIOParams_t": hipFileIOParams_t,
    "hipFileIOEvents_t": hipFileIOEvents_t,
    "hipFileOpCounter_t": hipFileOpCounter_t,
    "hipFileStatsLevel1_t": hipFileStatsLevel1_t,
    "hipFileStatsLevel2_t": hipFileStatsLevel2_t,
    "hipFilePerGpuStats_t": hipFilePerGpuStats_t,
    "hipFileStatsLevel3_t": hipFileStatsLevel3_t,
}

# --- function prototypes --------------------------------------------------------------------
_P = ctypes.POINTER
_void_p = ctypes.c_void_p
_uint = ctypes.c_uint
_err = hipFileError_t

#: name -> (restype, argtypes) for every function of hipfile.h, plus the two legacy names below.
PROTOTYPES: dict[str, tuple[type | None, list[type]]] = {
    "hipFileGetOpErrorString": (ctypes.c_char_p, [_enum]),
    "hipFileHandleRegister": (_err, [_P(hipFileHandle_t), _P(hipFileDescr_t)]),
    "hipFileHandleDeregister": (None, [hipFileHandle_t]),
    "hipFileBufRegister": (_err, [_void_p, size_t, ctypes.c_int]),
    "hipFileBufDeregister": (_err, [_void_p]),
    "hipFileRead": (ssize_t, [hipFileHandle_t, _void_p, size_t, hoff_t, hoff_t]),
    "hipFileWrite": (ssize_t, [hipFileHandle_t, _void_p, size_t, hoff_t, hoff_t]),
    "hipFileDriverOpen": (_err, []),
    "hipFileDriverClose": (_err, []),
    "hipFileUseCount": (ctypes.c_int64, []),
    "hipFileDriverGetProperties": (_err, [_P(hipFileDriverProps_t)]),
    "hipFileDriverSetPollMode": (_err, [ctypes.c_bool, size_t]),
    "hipFileDriverSetMaxDirectIOSize": (_err, [size_t]),
    "hipFileDriverSetMaxCacheSize": (_err, [size_t]),
    "hipFileDriverSetMaxPinnedMemSize": (_err, [size_t]),
    "hipFileBatchIOSetUp": (_err, [_P(hipFileBatchHandle_t), _uint]),
    "hipFileBatchIOSubmit": (_err, [hipFileBatchHandle_t, _uint, _P(hipFileIOParams_t), _uint]),
    "hipFileBatchIOGetStatus": (_err, [hipFileBatchHandle_t, _uint, _P(_uint), _P(hipFileIOEvents_t),
                                       _P(timespec)]),
    "hipFileBatchIOCancel": (_err, [hipFileBatchHandle_t]),
    "hipFileBatchIODestroy": (None, [hipFileBatchHandle_t]),
    "hipFileReadAsync": (_err, [hipFileHandle_t, _void_p, _P(size_t), _P(hoff_t), _P(hoff_t), _P(ssize_t),
                                hipStream_t]),
    "hipFileWriteAsync": (_err, [hipFileHandle_t, _void_p, _P(size_t), _P(hoff_t), _P(hoff_t), _P(ssize_t),
                                 hipStream_t]),
    "hipFileStreamRegister": (_err, [hipStream_t, _uint]),
    "hipFileStreamDeregister": (_err, [hipStream_t]),
    "hipFileGetVersion": (_err, [_P(_uint), _P(_uint), _P(_uint)]),
    "hipFileGetParameterSizeT": (_err, [_enum, _P(size_t)]),
    "hipFileGetParameterBool": (_err, [_enum, _P(ctypes.c_bool)]),
    "hipFileGetParameterString": (_err, [_enum, ctypes.c_char_p, ctypes.c_int]),
    "hipFileSetParameterSizeT": (_err, [_enum, size_t]),
    "hipFileSetParameterBool": (_err, [_enum, ctypes.c_bool]),
    "hipFileSetParameterString": (_err, [_enum, ctypes.c_char_p]),
    "hipFileGetStatsL1": (_err, [_P(hipFileStatsLevel1_t)]),
    "hipFileGetStatsL2": (_err, [_P(hipFileStatsLevel2_t)]),
    "hipFileGetStatsL3": (_err, [_P(hipFileStatsLevel3_t)]),
    # Legacy names of pre-0.2 builds (hipFile over rocFile): gone from current headers.
    "hipFileOpStatusError": (ctypes.c_char_p, [_enum]),
    "hipFileGetBackendVersion": (_err, [_P(ctypes.c_int)]),
}

#: Functions absent from older hipFile builds: name -> the first version that has them, as
#: major*10000 + minor*100 + patch (the stats API came with hipFile 0.5, ROCm 10.1). The rest are in
#: every hipFile 0.2+.
FUNCTION_SINCE: dict[str, int] = {
    "hipFileGetStatsL1": 500, "hipFileGetStatsL2": 500, "hipFileGetStatsL3": 500,
}

#: Functions that only older builds export, and what replaced them.
LEGACY: dict[str, str] = {
    "hipFileOpStatusError": "renamed hipFileGetOpErrorString in hipFile 0.2",
    "hipFileGetBackendVersion": "removed with the rocFile backend in hipFile 0.2",
}

#: Functions hipfile.h documents as not implemented: they return hipFileInternalError (5030) in
#: every build seen (the source says `throw std::runtime_error("Not Implemented")`).
NOT_IMPLEMENTED: frozenset[str] = frozenset({
    "hipFileDriverGetProperties", "hipFileDriverSetPollMode", "hipFileDriverSetMaxDirectIOSize",
    "hipFileDriverSetMaxCacheSize", "hipFileDriverSetMaxPinnedMemSize",
    "hipFileGetParameterSizeT", "hipFileGetParameterBool", "hipFileGetParameterString",
    "hipFileSetParameterSizeT", "hipFileSetParameterBool", "hipFileSetParameterString",
})
