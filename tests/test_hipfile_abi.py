"""Proves `pygds._hipfile_abi` against hipfile.h's facts, and finds and loads libhipfile.

No AMD GPU or ROCm is on CI, so the C probe compiles against an installed hipfile.h when there is one
(ROCm under ROCM_PATH or /opt/rocm), else against `HIPFILE_DECLARATIONS` below: hipfile.h (hipFile
0.2, plus the 0.5 stats API) transcribed by hand, with a two-line stand-in for hip_runtime_api.h.
The probe prints every struct size, alignment and field offset, every enum and #define value; all
are compared with ctypes, and every prototype with the C declaration. Library discovery, version and
lazily resolved symbols run against small libhipfile stand-ins compiled here.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pygds import _cufile_abi as cu_abi
from pygds import _hipfile_abi as abi
from pygds import errors
from pygds._lib import HIPFILE_SPEC, HipFileLib, find_library, hipfile_version_string
from pygds.errors import HipFileError, IOFailedError, LibraryNotFoundError, NotSupportedError

REPO = Path(__file__).resolve().parent.parent
HIP_RUNTIME_STANDIN = "typedef int hipError_t;\ntypedef struct ihipStream_t *hipStream_t;\n"

HIPFILE_DECLARATIONS = r"""
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <time.h>
#include <hip/hip_runtime_api.h>

#define HIPFILE_VERSION_MAJOR 0
#define HIPFILE_VERSION_MINOR 2
#define HIPFILE_VERSION_PATCH 0
typedef off_t hoff_t;
#define HIPFILE_BASE_ERR 5000
typedef enum hipFileOpError {
    hipFileSuccess = 0, hipFileDriverNotInitialized = HIPFILE_BASE_ERR + 1,
    hipFileDriverInvalidProps = HIPFILE_BASE_ERR + 2, hipFileDriverUnsupportedLimit = HIPFILE_BASE_ERR + 3,
    hipFileDriverVersionMismatch = HIPFILE_BASE_ERR + 4, hipFileDriverVersionReadError = HIPFILE_BASE_ERR + 5,
    hipFileDriverClosing = HIPFILE_BASE_ERR + 6, hipFilePlatformNotSupported = HIPFILE_BASE_ERR + 7,
    hipFileIONotSupported = HIPFILE_BASE_ERR + 8, hipFileDeviceNotSupported = HIPFILE_BASE_ERR + 9,
    hipFileDriverError = HIPFILE_BASE_ERR + 10, hipFileHipDriverError = HIPFILE_BASE_ERR + 11,
    hipFileHipPointerInvalid = HIPFILE_BASE_ERR + 12, hipFileHipMemoryTypeInvalid = HIPFILE_BASE_ERR + 13,
    hipFileHipPointerRangeError = HIPFILE_BASE_ERR + 14, hipFileHipContextMismatch = HIPFILE_BASE_ERR + 15,
    hipFileInvalidMappingSize = HIPFILE_BASE_ERR + 16, hipFileInvalidMappingRange = HIPFILE_BASE_ERR + 17,
    hipFileInvalidFileType = HIPFILE_BASE_ERR + 18, hipFileInvalidFileOpenFlag = HIPFILE_BASE_ERR + 19,
    hipFileDIONotSet = HIPFILE_BASE_ERR + 20, hipFileInvalidValue = HIPFILE_BASE_ERR + 22,
    hipFileMemoryAlreadyRegistered = HIPFILE_BASE_ERR + 23, hipFileMemoryNotRegistered = HIPFILE_BASE_ERR + 24,
    hipFilePermissionDenied = HIPFILE_BASE_ERR + 25, hipFileDriverAlreadyOpen = HIPFILE_BASE_ERR + 26,
    hipFileHandleNotRegistered = HIPFILE_BASE_ERR + 27, hipFileHandleAlreadyRegistered = HIPFILE_BASE_ERR + 28,
    hipFileDeviceNotFound = HIPFILE_BASE_ERR + 29, hipFileInternalError = HIPFILE_BASE_ERR + 30,
    hipFileGetNewFDFailed = HIPFILE_BASE_ERR + 31, hipFileDriverSetupError = HIPFILE_BASE_ERR + 33,
    hipFileIODisabled = HIPFILE_BASE_ERR + 34, hipFileBatchSubmitFailed = HIPFILE_BASE_ERR + 35,
    hipFileGPUMemoryPinningFailed = HIPFILE_BASE_ERR + 36, hipFileBatchFull = HIPFILE_BASE_ERR + 37,
    hipFileAsyncNotSupported = HIPFILE_BASE_ERR + 38, hipFileIOMaxError = HIPFILE_BASE_ERR + 39,
} hipFileOpError_t;
const char *hipFileGetOpErrorString(hipFileOpError_t status);
typedef struct hipFileError { hipFileOpError_t err; hipError_t hip_drv_err; } hipFileError_t;

typedef enum hipFileDriverStatusFlags {
    hipFileLustreSupported = 0, hipFileWekaFSSupported = 1, hipFileNFSSupported = 2, hipFileGPFSSupported = 3,
    hipFileNVMeSupported = 4, hipFileNVMeoFSupported = 5, hipFileSCSISupported = 6,
    hipFileScaleFluxCSDSupported = 7, hipFileNVMeshSupported = 8, hipFileBeeGFSSupported = 9,
    hipFileNVMeP2PSupported = 11, hipFileScatefsSupported = 12,
} hipFileDriverStatusFlags_t;
typedef enum hipFileDriverControlFlags { hipFileUsePollMode = 0, hipFileAllowCompatMode = 1 }
    hipFileDriverControlFlags_t;
typedef enum hipFileFeatureFlags {
    hipFileDynRoutingSupported = 0, hipFileBatchIOSupported = 1, hipFileStreamsSupported = 2,
    hipFileParallelIOSupported = 3,
} hipFileFeatureFlags_t;
typedef struct hipFileDriverProps {
    struct {
        unsigned major_version; unsigned minor_version;
        uint64_t poll_thresh_size; uint64_t max_direct_io_size;
        unsigned driver_status_flags; unsigned driver_control_flags;
    } nvfs;
    unsigned feature_flags;
    uint64_t max_device_cache_size; uint64_t per_buffer_cache_size; uint64_t max_device_pinned_mem_size;
    unsigned max_batch_io_count; unsigned max_batch_io_timeout_msecs;
} hipFileDriverProps_t;

typedef struct hipFileRDMAInfo { int version; int desc_len; const char *desc_str; } hipFileRDMAInfo_t;
#define HIPFILE_RDMA_REGISTER 1
#define HIPFILE_RDMA_RELAXED_ORDERING (1 << 1)
typedef struct hipFileFSOps {
    const char *(*fs_type)(void *handle);
    int (*getRDMADeviceList)(void *handle, struct sockaddr **hostaddrs);
    int (*getRDMADevicePriority)(void *handle, char *, size_t, hoff_t, struct sockaddr *hostaddr);
    ssize_t (*read)(void *handle, char *, size_t, hoff_t, hipFileRDMAInfo_t *);
    ssize_t (*write)(void *handle, const char *, size_t, hoff_t, hipFileRDMAInfo_t *);
} hipFileFSOps_t;
typedef enum hipFileFileHandleType {
    hipFileHandleTypeOpaqueFD = 1, hipFileHandleTypeOpaqueWin32 = 2, hipFileHandleTypeUserspaceFS = 3,
} hipFileFileHandleType_t;
typedef struct hipFileDescr {
    hipFileFileHandleType_t type;
    union { int fd; void *hFile; } handle;
    const hipFileFSOps_t *fs_ops;
} hipFileDescr_t;
typedef void *hipFileHandle_t;
hipFileError_t hipFileHandleRegister(hipFileHandle_t *fh, hipFileDescr_t *descr);
void hipFileHandleDeregister(hipFileHandle_t fh);
hipFileError_t hipFileBufRegister(const void *buffer_base, size_t length, int flags);
hipFileError_t hipFileBufDeregister(const void *buffer_base);
ssize_t hipFileRead(hipFileHandle_t fh, void *buffer_base, size_t size, hoff_t file_offset, hoff_t buffer_offset);
ssize_t hipFileWrite(hipFileHandle_t fh, const void *buffer_base, size_t size, hoff_t file_offset,
                     hoff_t buffer_offset);
hipFileError_t hipFileDriverOpen(void);
hipFileError_t hipFileDriverClose(void);
int64_t hipFileUseCount(void);
hipFileError_t hipFileDriverGetProperties(hipFileDriverProps_t *props);
hipFileError_t hipFileDriverSetPollMode(bool poll, size_t poll_threshold_size);
hipFileError_t hipFileDriverSetMaxDirectIOSize(size_t max_direct_io_size);
hipFileError_t hipFileDriverSetMaxCacheSize(size_t max_cache_size);
hipFileError_t hipFileDriverSetMaxPinnedMemSize(size_t max_pinned_size);

typedef enum hipFileOpcode { hipFileBatchRead = 0, hipFileBatchWrite = 1 } hipFileOpcode_t;
typedef enum hipFileStatus {
    hipFileWaiting = 1 << 0, hipFilePending = 1 << 1, hipFileInvalid = 1 << 2, hipFileCanceled = 1 << 3,
    hipFileComplete = 1 << 4, hipFileTimeout = 1 << 5, hipFileFailed = 1 << 6,
} hipFileStatus_t;
typedef enum hipFileBatchMode { hipFileBatch = 1 } hipFileBatchMode_t;
typedef struct hipFileIOParams {
    hipFileBatchMode_t mode;
    union {
        struct { void *devPtr_base; int64_t file_offset; int64_t devPtr_offset; size_t size; } batch;
    } u;
    hipFileHandle_t fh;
    hipFileOpcode_t opcode;
    void *cookie;
} hipFileIOParams_t;
typedef struct hipFileIOEvents { void *cookie; hipFileStatus_t status; size_t ret; } hipFileIOEvents_t;
typedef void *hipFileBatchHandle_t;
hipFileError_t hipFileBatchIOSetUp(hipFileBatchHandle_t *batch_idp, unsigned max_nr);
hipFileError_t hipFileBatchIOSubmit(hipFileBatchHandle_t batch_idp, unsigned nr, hipFileIOParams_t *iocbp,
                                    unsigned flags);
hipFileError_t hipFileBatchIOGetStatus(hipFileBatchHandle_t batch_idp, unsigned min_nr, unsigned *nr,
                                       hipFileIOEvents_t *iocbp, struct timespec *timeout);
hipFileError_t hipFileBatchIOCancel(hipFileBatchHandle_t batch_idp);
void hipFileBatchIODestroy(hipFileBatchHandle_t batch_idp);

#define HIPFILE_STREAM_FIXED_BUF_OFFSET 1
#define HIPFILE_STREAM_FIXED_FILE_OFFSET (1 << 1)
#define HIPFILE_STREAM_FIXED_FILE_SIZE (1 << 2)
#define HIPFILE_STREAM_PAGE_ALIGNED_INPUTS (1 << 3)
#define HIPFILE_STREAM_FLAGS_MASK 0xf
hipFileError_t hipFileReadAsync(hipFileHandle_t fh, void *buffer_base, size_t *size_p, hoff_t *file_offset_p,
                                hoff_t *buffer_offset_p, ssize_t *bytes_read_p, hipStream_t stream);
hipFileError_t hipFileWriteAsync(hipFileHandle_t fh, void *buffer_base, size_t *size_p, hoff_t *file_offset_p,
                                 hoff_t *buffer_offset_p, ssize_t *bytes_written_p, hipStream_t stream);
hipFileError_t hipFileStreamRegister(hipStream_t stream, unsigned flags);
hipFileError_t hipFileStreamDeregister(hipStream_t stream);
hipFileError_t hipFileGetVersion(unsigned *major, unsigned *minor, unsigned *patch);

typedef enum hipFileSizeTConfigParameter_t {
    hipFileParamProfileStats, hipFileParamExecutionMaxIOQueueDepth, hipFileParamExecutionMaxIOThreads,
    hipFileParamExecutionMinIOThresholdSizeKB, hipFileParamExecutionMaxRequestParallelism,
    hipFileParamPropertiesMaxDirectIOSizeKB, hipFileParamPropertiesMaxDeviceCacheSizeKB,
    hipFileParamPropertiesPerBufferCacheSizeKB, hipFileParamPropertiesMaxDevicePinnedMemSizeKB,
    hipFileParamPropertiesIOBatchsize, hipFileParamPollthresholdSizeKB, hipFileParamPropertiesBatchIOTimeoutMs,
} hipFileSizeTConfigParameter_t;
typedef enum hipFileBoolConfigParameter_t {
    hipFileParamPropertiesUsePollMode, hipFileParamPropertiesAllowCompatMode, hipFileParamForceCompatMode,
    hipFileParamFsMiscApiCheckAggressive, hipFileParamExecutionParallelIO, hipFileParamProfileNvtx,
    hipFileParamPropertiesAllowSystemMemory, hipFileParamUsePcip2pdma, hipFileParamPreferIOUring,
    hipFileParamForceOdirectMode, hipFileParamSkipTopologyDetection, hipFileParamStreamMemopsBypass,
} hipFileBoolConfigParameter_t;
typedef enum hipFileStringConfigParameter_t {
    hipFileParamLoggingLevel, hipFileParamEnvLogfilePath, hipFileParamLogDir,
} hipFileStringConfigParameter_t;
hipFileError_t hipFileGetParameterSizeT(hipFileSizeTConfigParameter_t param, size_t *value);
hipFileError_t hipFileGetParameterBool(hipFileBoolConfigParameter_t param, bool *value);
hipFileError_t hipFileGetParameterString(hipFileStringConfigParameter_t param, char *desc_str, int len);
hipFileError_t hipFileSetParameterSizeT(hipFileSizeTConfigParameter_t param, size_t value);
hipFileError_t hipFileSetParameterBool(hipFileBoolConfigParameter_t param, bool value);
hipFileError_t hipFileSetParameterString(hipFileStringConfigParameter_t param, const char *desc_str);

#define HIPFILE_MAX_GPUS 16
#define HIPFILE_GPU_UUID_LEN 16
typedef struct hipFileOpCounter { uint64_t ok; uint64_t err; } hipFileOpCounter_t;
typedef struct hipFileStatsLevel1 {
    hipFileOpCounter_t read_ops, write_ops, hdl_register_ops, hdl_deregister_ops, buf_register_ops,
        buf_deregister_ops;
    uint64_t read_bytes, write_bytes, read_bw_bytes_per_sec, write_bw_bytes_per_sec, read_lat_avg_us,
        write_lat_avg_us;
    uint64_t read_ops_per_sec, write_ops_per_sec;
    uint64_t read_lat_sum_us, write_lat_sum_us;
    hipFileOpCounter_t batch_submit_ops, batch_complete_ops, batch_setup_ops, batch_cancel_ops,
        batch_destroy_ops, batch_enqueued_ops, batch_posix_enqueued_ops, batch_processed_ops,
        batch_posix_processed_ops, batch_nvfs_submit_ops, batch_p2p_submit_ops, batch_aio_submit_ops,
        batch_iouring_submit_ops, batch_mixed_io_submit_ops, batch_total_submit_ops;
    uint64_t batch_read_bytes, batch_write_bytes, batch_read_bw_bytes, batch_write_bw_bytes,
        batch_submit_lat_avg_us, batch_completion_lat_avg_us, batch_submit_ops_per_sec,
        batch_complete_ops_per_sec, batch_submit_lat_sum_us, batch_completion_lat_sum_us,
        last_batch_read_bytes, last_batch_write_bytes;
} hipFileStatsLevel1_t;
typedef struct hipFileStatsLevel2 {
    hipFileStatsLevel1_t basic; uint64_t read_size_kb_hist[32]; uint64_t write_size_kb_hist[32];
} hipFileStatsLevel2_t;
typedef struct hipFilePerGpuStats {
    char uuid[HIPFILE_GPU_UUID_LEN];
    uint64_t read_bytes, read_bw_bytes_per_sec, read_utilization, read_duration_us, n_total_reads, n_p2p_reads,
        n_nvfs_reads, n_posix_reads, n_unaligned_reads, n_dr_reads, n_sparse_regions, n_inline_regions,
        n_reads_err;
    uint64_t write_bytes, write_bw_bytes_per_sec, write_utilization, write_duration_us, n_total_writes,
        n_p2p_writes, n_nvfs_writes, n_posix_writes, n_unaligned_writes, n_dr_writes, n_writes_err;
    uint64_t n_mmap, n_mmap_ok, n_mmap_err, n_mmap_free, reg_bytes;
} hipFilePerGpuStats_t;
typedef struct hipFileStatsLevel3 {
    hipFileStatsLevel2_t detailed; uint32_t num_gpus; hipFilePerGpuStats_t per_gpu_stats[HIPFILE_MAX_GPUS];
} hipFileStatsLevel3_t;
hipFileError_t hipFileGetStatsL1(hipFileStatsLevel1_t *stats);
hipFileError_t hipFileGetStatsL2(hipFileStatsLevel2_t *stats);
hipFileError_t hipFileGetStatsL3(hipFileStatsLevel3_t *stats);
"""

# Names in PROTOTYPES that current headers no longer declare (kept for older libraries).
LEGACY_FUNCTIONS = {"hipFileOpStatusError", "hipFileGetBackendVersion"}


def _compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no C compiler (cc, gcc or clang) on PATH; the hipFile ABI probe needs one")


def _installed_header() -> Path | None:
    """An installed hipfile.h with the HIP headers beside it, if ROCm is here."""
    for root in filter(None, (os.environ.get("ROCM_PATH"), "/opt/rocm")):
        header = Path(root) / "include" / "hipfile.h"
        if header.is_file() and (Path(root) / "include" / "hip" / "hip_runtime_api.h").is_file():
            return header
    return None


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(the hipfile.h the probe includes, compiler flags)."""
    installed = _installed_header()
    if installed is not None:
        return installed, ["-D__HIP_PLATFORM_AMD__", "-I", str(installed.parent)]
    d = tmp_path_factory.mktemp("hipfile_include")
    (d / "hip").mkdir()
    (d / "hip" / "hip_runtime_api.h").write_text(HIP_RUNTIME_STANDIN)
    (d / "hipfile.h").write_text(HIPFILE_DECLARATIONS)
    return d / "hipfile.h", ["-I", str(d)]


def _fields(ctype: type, prefix: str = "", base: int = 0):
    """(path, offset, size) of every field, nested structs and unions included."""
    for name, ftype in ctype._fields_:
        desc = getattr(ctype, name)
        path = prefix + name
        yield path, base + desc.offset, desc.size
        if isinstance(ftype, type) and issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            yield from _fields(ftype, path + ".", base + desc.offset)


def _probe_source() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <hipfile.h>", "int main(void) {"]
    for cname, ctype in abi.STRUCTS.items():
        lines.append(f'printf("size {cname} %zu\\n", sizeof({cname}));')
        lines.append(f'printf("align {cname} %zu\\n", (size_t)_Alignof({cname}));')
        for path, _, _ in _fields(ctype):
            lines.append(f'printf("offset {cname} {path} %zu\\n", offsetof({cname}, {path}));')
            lines.append(f'printf("fieldsize {cname} {path} %zu\\n", sizeof((({cname} *)0)->{path}));')
    for ename, enum in abi.ENUMS.items():
        lines.append(f'printf("enumsize {ename} %zu\\n", sizeof({ename}_t));'
                     if not ename.endswith("_t") else f'printf("enumsize {ename} %zu\\n", sizeof({ename}));')
        for member in enum.__members__:
            lines.append(f'printf("value {member} %lld\\n", (long long)({member}));')
    for name in abi.DEFINES:
        lines.append(f'printf("value {name} %lld\\n", (long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def probe(header: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> dict:
    path, flags = header
    d = tmp_path_factory.mktemp("hipfile_probe")
    (d / "probe.c").write_text(_probe_source())
    build = subprocess.run([_compiler(), "-std=gnu11", *flags, str(d / "probe.c"), "-o", str(d / "probe")],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"the probe does not compile against {path}:\n{build.stderr}"
    run = subprocess.run([str(d / "probe")], capture_output=True, text=True, check=True)
    out: dict = {"size": {}, "align": {}, "offset": {}, "fieldsize": {}, "enumsize": {}, "value": {}}
    for line in run.stdout.splitlines():
        kind, rest = line.split(" ", 1)
        key, value = rest.rsplit(" ", 1)
        out[kind][key] = int(value)
    return out


# --- layouts and values --------------------------------------------------------------------------
def test_struct_sizes_and_alignments(probe: dict) -> None:
    for cname, ctype in abi.STRUCTS.items():
        assert probe["size"][cname] == ctypes.sizeof(ctype), cname
        assert probe["align"][cname] == ctypes.alignment(ctype), cname


def test_every_field_offset_and_size(probe: dict) -> None:
    checked = 0
    for cname, ctype in abi.STRUCTS.items():
        for path, offset, size in _fields(ctype):
            assert probe["offset"][f"{cname} {path}"] == offset, f"offsetof({cname}, {path})"
            assert probe["fieldsize"][f"{cname} {path}"] == size, f"sizeof({cname}.{path})"
            checked += 1
    assert checked > 150


def test_every_enum_value_and_define(probe: dict) -> None:
    for ename, enum in abi.ENUMS.items():
        assert probe["enumsize"][ename] == ctypes.sizeof(ctypes.c_int), ename
        for member, value in enum.__members__.items():
            assert probe["value"][member] == value, member
            assert getattr(abi, member) == value and type(getattr(abi, member)) is int, member
    for name, value in abi.DEFINES.items():
        assert probe["value"][name] == value, name


def test_the_layout_facts_hipfile_shares_with_cufile(probe: dict) -> None:
    """hipify turns cuFile code into hipFile code unchanged: the structs a caller fills agree byte for byte."""
    for hip_struct, cu_struct in ((abi.hipFileDescr_t, cu_abi.CUfileDescr_t),
                                  (abi.hipFileIOParams_t, cu_abi.CUfileIOParams_t),
                                  (abi.hipFileIOEvents_t, cu_abi.CUfileIOEvents_t),
                                  (abi.hipFileError_t, cu_abi.CUfileError_t),
                                  (abi.hipFileStatsLevel1_t, cu_abi.CUfileStatsLevel1_v1150_t)):
        assert [(o, s) for _, o, s in _fields(hip_struct)] == [(o, s) for _, o, s in _fields(cu_struct)]
    assert probe["offset"]["hipFileDescr_t handle"] == 8 and probe["offset"]["hipFileDescr_t fs_ops"] == 16
    # ... and where they differ: hipFile's driver properties hold 64-bit sizes
    assert ctypes.sizeof(abi.hipFileDriverProps_t) == probe["size"]["hipFileDriverProps_t"] == 72
    assert ctypes.sizeof(cu_abi.CUfileDrvProps_t) == 56
    for (code, hip_name, _), cu_code in zip(abi.HIPFILE_OP_ERRORS, [c for c, _, _ in cu_abi.CUFILEOP_STATUS_ENTRIES]):
        assert code == cu_code, hip_name  # the same numbers up to 5038, under other names


# --- every function of the header is declared, with its C types -----------------------------------
_SCALARS = {
    "void": None, "int": ctypes.c_int, "unsigned": ctypes.c_uint, "bool": ctypes.c_bool,
    "size_t": ctypes.c_size_t, "ssize_t": ctypes.c_ssize_t, "int64_t": ctypes.c_int64, "hoff_t": ctypes.c_int64,
    "char": ctypes.c_char, "hipStream_t": ctypes.c_void_p, "hipFileHandle_t": ctypes.c_void_p,
    "hipFileBatchHandle_t": ctypes.c_void_p, "struct timespec": abi.timespec,
}


def _ctype(decl: str) -> object:
    """The ctypes type for a C type as written in a prototype ("const void *", "hipFileDescr_t *", ...)."""
    decl = re.sub(r"\bconst\b", "", decl).strip()
    pointers = decl.count("*")
    base = decl.replace("*", "").strip()
    if base in abi.ENUMS or base.removesuffix("_t") in abi.ENUMS:
        base_type: object = ctypes.c_int
    elif base in abi.STRUCTS:
        base_type = abi.STRUCTS[base]
    else:
        base_type = _SCALARS[base]
    if pointers == 0:
        return base_type
    if base_type is None:
        return ctypes.c_void_p
    if base_type is ctypes.c_char:
        return ctypes.c_char_p
    return ctypes.POINTER(base_type)


def _declared_functions(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (return type, [argument types]) of the function declarations in C text."""
    text = re.sub(r"\s+", " ", text)
    found = {}
    for ret, name, args in re.findall(r"(?:^|(?<=[;}] ))((?:const )?[A-Za-z_][\w ]*?\**) ?(hipFile\w+)\(([^()]*)\);",
                                      text):
        params = [] if args.strip() == "void" else [re.sub(r"\s*\b\w+$", "", a.strip()) if not a.strip().endswith("*")
                                                    else a.strip() for a in args.split(",")]
        found[name] = (ret.strip(), params)
    return found


def test_every_prototype_matches_the_header(header: tuple[Path, list[str]]) -> None:
    text = header[0].read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#.*$", " ", text, flags=re.M)
    text = re.sub(r"\b(HIPFILE_API|__HIPFILE_NODISCARD)\b", " ", text)
    declared = _declared_functions(text)
    assert set(declared) == set(abi.PROTOTYPES) - LEGACY_FUNCTIONS
    for name, (ret, params) in declared.items():
        restype, argtypes = abi.PROTOTYPES[name]
        assert restype is _ctype(ret), f"{name} returns {ret}"
        assert argtypes == [_ctype(p) for p in params], f"{name}({', '.join(params)})"


def test_not_implemented_and_versioned_functions_are_declared() -> None:
    assert abi.NOT_IMPLEMENTED <= set(abi.PROTOTYPES)
    assert set(abi.FUNCTION_SINCE) | set(abi.LEGACY) <= set(abi.PROTOTYPES)


# --- error codes ---------------------------------------------------------------------------------
def test_every_code_has_a_name_and_an_explanation() -> None:
    assert [code for code, _, _ in abi.HIPFILE_OP_ERRORS] == sorted(errors.HIPFILE_EXPLANATIONS)
    for code, name, text in abi.HIPFILE_OP_ERRORS:
        assert abi.hipFileOpError(code).name == name
        assert errors.hipfile_error_name(code) == errors.hipfile_error_name(-code) == name
        assert errors.explain_hipfile(code).startswith(f"{text}: ")
    assert errors.hipfile_error_name(5021) == "hipFileUnknownError5021"
    assert "not a hipFileOpError code" in errors.explain_hipfile(5021)


def test_hipfile_error_carries_code_name_explanation_and_hip_error() -> None:
    exc = HipFileError("hipFileHandleRegister(/data/x)", 5011, 100, path="/data/x")
    assert (exc.code, exc.name, exc.hip_err, exc.hip_err_name) == (5011, "hipFileHipDriverError", 100,
                                                                  "hipErrorNoDevice")
    message = str(exc)
    assert message.startswith("hipFileHandleRegister(/data/x) failed on /data/x: hipFileHipDriverError (5011): ")
    assert message.endswith("HIP error: hipErrorNoDevice (100).")
    clone = __import__("pickle").loads(__import__("pickle").dumps(exc))
    assert (type(clone), str(clone), clone.path) == (HipFileError, message, "/data/x")
    assert errors.hip_error_name(12345) == "HIP error 12345"


def test_status_structs_and_io_results_decode() -> None:
    errors.check_hipfile_status("hipFileDriverOpen", abi.hipFileError_t(abi.hipFileSuccess, 0))
    with pytest.raises(HipFileError) as info:
        errors.check_hipfile_status("hipFileBufRegister", abi.hipFileError_t(5013, 0), path="/f")
    assert (info.value.name, info.value.path) == ("hipFileHipMemoryTypeInvalid", "/f")
    assert "pageable host and managed memory are refused" in str(info.value)

    assert errors.decode_io_result("hipFileRead", 4096, 0, error=HipFileError) == 4096
    with pytest.raises(HipFileError, match=r"hipFileRead failed on /f: hipFileHandleNotRegistered \(5027\)"):
        errors.decode_io_result("hipFileRead", -5027, 0, path="/f", error=HipFileError)
    with pytest.raises(IOFailedError) as io:
        errors.decode_io_result("hipFileWrite", -1, 28, path="/f", error=HipFileError)
    assert io.value.errno == 28 and "file system is full" in str(io.value)


# --- finding and loading libhipfile ---------------------------------------------------------------
FAKE_LIBHIPFILE_C = r"""
#include <stdio.h>
#include <stdlib.h>
typedef struct { int err; int hip_drv_err; } hipFileError_t;
hipFileError_t hipFileGetVersion(unsigned *major, unsigned *minor, unsigned *patch) {
    hipFileError_t s = {0, 0};
    const char *v = getenv("PYGDS_FAKE_HIPFILE_VERSION");
    if (v && v[0] == 'x') { s.err = 5030; return s; }
    if (sscanf(v ? v : "0.2.0", "%u.%u.%u", major, minor, patch) != 3) s.err = 5022;
    return s;
}
hipFileError_t hipFileDriverOpen(void) { hipFileError_t s = {0, 0}; return s; }
"""


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fake_libhipfile")
    (d / "fake.c").write_text(FAKE_LIBHIPFILE_C)
    path = d / "libhipfile.so.0"
    subprocess.run([_compiler(), "-shared", "-fPIC", "-o", str(path), str(d / "fake.c")], check=True)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYGDS_", "ROCM_", "HIP_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


DESCRIBE = ("import json; from pygds._lib import hipfile; lib = hipfile(); "
            "print(json.dumps(dict(path=lib.path, source=lib.source, version=lib.version, "
            "version_string=lib.version_string, version_tuple=lib.version_tuple, cached=hipfile() is lib)))")


def _describe(env: dict[str, str]) -> dict:
    run = subprocess.run([sys.executable, "-c", DESCRIBE], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_an_explicit_path_is_loaded_and_reports_its_version(fake_lib: Path) -> None:
    lib = _describe(_env(PYGDS_HIPFILE_LIB=str(fake_lib)))
    assert (lib["path"], lib["source"]) == (str(fake_lib), "PYGDS_HIPFILE_LIB")
    assert (lib["version"], lib["version_string"], lib["version_tuple"]) == (200, "0.2.0", [0, 2, 0])
    assert lib["cached"] is True
    lib = _describe(_env(PYGDS_HIPFILE_LIB=str(fake_lib.parent), PYGDS_FAKE_HIPFILE_VERSION="0.5.1"))
    assert (lib["path"], lib["version"], lib["version_string"]) == (str(fake_lib), 501, "0.5.1")


def test_rocm_path_and_the_rocm_folders_are_searched(fake_lib: Path, tmp_path: Path) -> None:
    rocm = tmp_path / "rocm-7.2.0"
    (rocm / "lib").mkdir(parents=True)
    (rocm / "lib" / "libhipfile.so.0").symlink_to(fake_lib)
    lib = _describe(_env(ROCM_PATH=str(rocm)))
    assert (lib["path"], lib["source"]) == (str(rocm / "lib" / "libhipfile.so.0"), "ROCM_PATH")

    newer = tmp_path / "rocm-7.10.1" / "lib64"
    newer.mkdir(parents=True)
    (newer / "libhipfile.so").symlink_to(fake_lib)
    (tmp_path / "rocm" / "lib").mkdir(parents=True)
    (tmp_path / "rocm" / "lib" / "libhipfile.so.0").write_text("not a library\n")  # found first, skipped
    spec = dataclasses.replace(HIPFILE_SPEC, glob_patterns=(str(tmp_path / "rocm"), str(tmp_path / "rocm-*")))
    found = find_library(spec, environ={}, site_dirs=[], use_loader=False)
    assert (found.path, found.source) == (str(newer / "libhipfile.so"), str(tmp_path / "rocm-*"))


def test_nothing_found_lists_every_place(tmp_path: Path) -> None:
    spec = dataclasses.replace(HIPFILE_SPEC, glob_patterns=(str(tmp_path / "opt-rocm*"),))
    (tmp_path / "opt-rocm-7.2.0").mkdir()
    script = ("import dataclasses, json; from pygds._lib import HIPFILE_SPEC, find_library\n"
              "from pygds.errors import LibraryNotFoundError\n"
              f"spec = dataclasses.replace(HIPFILE_SPEC, glob_patterns=({spec.glob_patterns[0]!r},))\n"
              "try:\n"
              f"    find_library(spec, environ={{'ROCM_PATH': {str(tmp_path / 'home')!r}}}, site_dirs=[])\n"
              "except LibraryNotFoundError as exc:\n"
              "    print(json.dumps(dict(message=str(exc), library=exc.library, searched=exc.searched)))\n")
    run = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout, run.stderr
    error = json.loads(run.stdout)
    if "dynamic loader: libhipfile.so.0: " not in error["message"]:
        pytest.skip("a libhipfile is on this system's loader path")
    assert error["message"].startswith("libhipfile not found. Looked in:\n  PYGDS_HIPFILE_LIB: not set\n")
    for place in (f"ROCM_PATH: {tmp_path}/home/lib/{{libhipfile.so.0,libhipfile.so}}: not found",
                  f"ROCM_PATH: {tmp_path}/home/lib64/", f"{tmp_path}/opt-rocm*: {tmp_path}/opt-rocm-7.2.0/lib/",
                  "dynamic loader: libhipfile.so: "):
        assert place in error["message"]
    assert "hipFile" in error["message"] and "PYGDS_HIPFILE_LIB=/path/to/libhipfile.so.0" in error["message"]
    assert error["library"] == "libhipfile" and len(error["searched"]) == 1 + 2 + 2 + 2


def test_a_bogus_explicit_path_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(LibraryNotFoundError, match="PYGDS_HIPFILE_LIB=/nonexistent/libhipfile.so.0 does not "
                                                   "name a loadable libhipfile: no such file"):
        find_library(HIPFILE_SPEC, environ={"PYGDS_HIPFILE_LIB": "/nonexistent/libhipfile.so.0"})
    with pytest.raises(LibraryNotFoundError, match="cannot load libhipfile from"):
        HipFileLib(tmp_path / "missing.so")


def test_symbols_resolve_lazily_and_missing_ones_say_which_version(fake_lib: Path) -> None:
    lib = HipFileLib(fake_lib, source="test")
    assert "hipFileDriverOpen" not in vars(lib)
    open_ = lib.hipFileDriverOpen
    assert open_ is lib.hipFileDriverOpen and "hipFileDriverOpen" in vars(lib)
    assert (open_.restype, open_.argtypes) == abi.PROTOTYPES["hipFileDriverOpen"]
    assert lib.hipFileDriverOpen().err == abi.hipFileSuccess  # a hipFileError_t returned by value
    assert not lib.has("hipFileRead")
    with pytest.raises(NotSupportedError) as info:
        lib.hipFileGetStatsL1  # noqa: B018
    assert str(info.value) == (f"hipFileGetStatsL1 is not supported by libhipfile 0.2.0 at {fake_lib} (it first "
                               "appears in libhipfile 0.5.0); install a newer hipFile (ROCm), or avoid this feature")
    with pytest.raises(NotSupportedError, match=r"hipFileOpStatusError was renamed hipFileGetOpErrorString"):
        lib.hipFileOpStatusError  # noqa: B018
    with pytest.raises(NotSupportedError, match=r"hipFileRead is not supported by libhipfile 0.2.0 .*newer hipFile"):
        lib.hipFileRead  # noqa: B018
    with pytest.raises(AttributeError, match="not a function of hipfile.h"):
        lib.cuFileRead  # noqa: B018


def test_an_unreadable_version_is_unknown_not_an_error(fake_lib: Path) -> None:
    lib = _describe(_env(PYGDS_HIPFILE_LIB=str(fake_lib), PYGDS_FAKE_HIPFILE_VERSION="x"))
    assert (lib["version"], lib["version_string"], lib["version_tuple"]) == (0, "unknown", [0, 0, 0])
    assert hipfile_version_string(200) == "0.2.0" and hipfile_version_string(10203) == "1.2.3"


def test_import_loads_no_library() -> None:
    run = subprocess.run([sys.executable, "-c",
                          "import pygds, pygds.engines.hipfile, pygds.hip, pygds._hipfile_abi; "
                          "maps = open('/proc/self/maps').read(); import pygds._lib as l; "
                          "print('libhipfile' in maps, 'libamdhip64' in maps, l._hip_instance)"],
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "False", "None"]
