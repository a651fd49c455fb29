"""pygds exceptions, cuFile and hipFile status codes with human explanations, and decoding of results.

Every pygds exception derives from `PygdsError`. cuFile reports failure three ways, all decoded
here: a `CUfileError_t` status (`check_status`), a read/write return value that is bytes, -1 with
errno, or a negative `CUfileOpError` (`decode_io_result`), and a batch event whose `size_t ret`
holds a negative value (`decode_batch_event`). hipFile uses the same numbers under its own names
and a `hipError_t` instead of a `CUresult`: `check_hipfile_status` and `HipFileError`, and
`decode_io_result(..., error=HipFileError)` for its reads and writes. One mechanism serves both
libraries: an `OpErrorTable` (names, header strings, explanations) per library, and
`LibraryCallError`, the base of `CuFileError` and `HipFileError`. The GPU runtimes' own failures
are `CudaError` and `HipError`.
"""
from __future__ import annotations

import errno as _errno
import os

from . import _cufile_abi as abi
from . import _hipfile_abi as hip_abi


class PygdsError(Exception):
    """Base class of every pygds exception."""


class LibraryNotFoundError(PygdsError):
    """A native library (libcufile, libhipfile) could not be found or loaded.

    `searched` lists every place that was tried, each with why it did not work.
    """

    def __init__(self, message: str, *, library: str = "", searched: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.library = library
        self.searched = tuple(searched)


class NotSupportedError(PygdsError):
    """A symbol or feature is missing from the loaded library; the message names its version."""


class DriverUnavailableError(PygdsError):
    """The never-hang guard refused cuFile or hipFile; the message names the cause and the fix."""


class InvalidArgumentError(PygdsError, ValueError):
    """An argument is out of range or inconsistent; the message names it and the allowed values."""


class UnsupportedBufferError(PygdsError, TypeError):
    """An object that pygds cannot turn into a buffer (pointer and size)."""


class FileClosedError(PygdsError, ValueError):
    """I/O on a file or handle that was closed."""


class GpuRuntimeError(PygdsError, RuntimeError):
    """A GPU runtime call failed: carries the call (`op`), the runtime's error `code` and its `name`."""

    def __init__(self, op: str, code: int, name: str, detail: str = "") -> None:
        self.op, self.code, self.name = op, code, name
        message = f"{op} failed with {name} ({code})"
        super().__init__(f"{message}: {detail}" if detail else message)


class CudaError(GpuRuntimeError):
    """A CUDA driver call (through cuda-python) failed with a `CUresult`."""


class HipError(GpuRuntimeError):
    """A HIP runtime call (through hip-python) failed with a `hipError_t`."""


# --- CUDA driver error names -------------------------------------------------------------------
#: CUresult code -> name, as in cuda.h of CUDA 13.
CURESULT_NAMES: dict[int, str] = {
    0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED", 4: "CUDA_ERROR_DEINITIALIZED", 5: "CUDA_ERROR_PROFILER_DISABLED",
    6: "CUDA_ERROR_PROFILER_NOT_INITIALIZED", 7: "CUDA_ERROR_PROFILER_ALREADY_STARTED",
    8: "CUDA_ERROR_PROFILER_ALREADY_STOPPED", 34: "CUDA_ERROR_STUB_LIBRARY",
    36: "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER", 46: "CUDA_ERROR_DEVICE_UNAVAILABLE",
    47: "CUDA_ERROR_MULTICAST_RESOURCE_FULL", 100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE",
    102: "CUDA_ERROR_DEVICE_NOT_LICENSED", 200: "CUDA_ERROR_INVALID_IMAGE", 201: "CUDA_ERROR_INVALID_CONTEXT",
    202: "CUDA_ERROR_CONTEXT_ALREADY_CURRENT", 205: "CUDA_ERROR_MAP_FAILED", 206: "CUDA_ERROR_UNMAP_FAILED",
    207: "CUDA_ERROR_ARRAY_IS_MAPPED", 208: "CUDA_ERROR_ALREADY_MAPPED", 209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
    210: "CUDA_ERROR_ALREADY_ACQUIRED", 211: "CUDA_ERROR_NOT_MAPPED", 212: "CUDA_ERROR_NOT_MAPPED_AS_ARRAY",
    213: "CUDA_ERROR_NOT_MAPPED_AS_POINTER", 214: "CUDA_ERROR_ECC_UNCORRECTABLE",
    215: "CUDA_ERROR_UNSUPPORTED_LIMIT", 216: "CUDA_ERROR_CONTEXT_ALREADY_IN_USE",
    217: "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED", 218: "CUDA_ERROR_INVALID_PTX",
    219: "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT", 220: "CUDA_ERROR_NVLINK_UNCORRECTABLE",
    221: "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", 222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
    223: "CUDA_ERROR_JIT_COMPILATION_DISABLED", 224: "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY",
    225: "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC", 226: "CUDA_ERROR_CONTAINED",
    227: "CUDA_ERROR_INSUFFICIENT_LOADER_VERSION", 300: "CUDA_ERROR_INVALID_SOURCE",
    301: "CUDA_ERROR_FILE_NOT_FOUND", 302: "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND",
    303: "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED", 304: "CUDA_ERROR_OPERATING_SYSTEM",
    400: "CUDA_ERROR_INVALID_HANDLE", 401: "CUDA_ERROR_ILLEGAL_STATE", 402: "CUDA_ERROR_LOSSY_QUERY",
    500: "CUDA_ERROR_NOT_FOUND", 600: "CUDA_ERROR_NOT_READY", 700: "CUDA_ERROR_ILLEGAL_ADDRESS",
    701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", 702: "CUDA_ERROR_LAUNCH_TIMEOUT",
    703: "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING", 704: "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
    705: "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED", 708: "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE",
    709: "CUDA_ERROR_CONTEXT_IS_DESTROYED", 710: "CUDA_ERROR_ASSERT", 711: "CUDA_ERROR_TOO_MANY_PEERS",
    712: "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", 713: "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
    714: "CUDA_ERROR_HARDWARE_STACK_ERROR", 715: "CUDA_ERROR_ILLEGAL_INSTRUCTION",
    716: "CUDA_ERROR_MISALIGNED_ADDRESS", 717: "CUDA_ERROR_INVALID_ADDRESS_SPACE", 718: "CUDA_ERROR_INVALID_PC",
    719: "CUDA_ERROR_LAUNCH_FAILED", 720: "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
    721: "CUDA_ERROR_TENSOR_MEMORY_LEAK", 800: "CUDA_ERROR_NOT_PERMITTED", 801: "CUDA_ERROR_NOT_SUPPORTED",
    802: "CUDA_ERROR_SYSTEM_NOT_READY", 803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", 805: "CUDA_ERROR_MPS_CONNECTION_FAILED",
    806: "CUDA_ERROR_MPS_RPC_FAILURE", 807: "CUDA_ERROR_MPS_SERVER_NOT_READY",
    808: "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED", 809: "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED",
    810: "CUDA_ERROR_MPS_CLIENT_TERMINATED", 811: "CUDA_ERROR_CDP_NOT_SUPPORTED",
    812: "CUDA_ERROR_CDP_VERSION_MISMATCH", 900: "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
    901: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", 902: "CUDA_ERROR_STREAM_CAPTURE_MERGE",
    903: "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", 904: "CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
    905: "CUDA_ERROR_STREAM_CAPTURE_ISOLATION", 906: "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
    907: "CUDA_ERROR_CAPTURED_EVENT", 908: "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", 909: "CUDA_ERROR_TIMEOUT",
    910: "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE", 911: "CUDA_ERROR_EXTERNAL_DEVICE",
    912: "CUDA_ERROR_INVALID_CLUSTER_SIZE", 913: "CUDA_ERROR_FUNCTION_NOT_LOADED",
    914: "CUDA_ERROR_INVALID_RESOURCE_TYPE", 915: "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION",
    916: "CUDA_ERROR_KEY_ROTATION", 917: "CUDA_ERROR_STREAM_DETACHED", 918: "CUDA_ERROR_GRAPH_RECAPTURE_FAILURE",
    919: "CUDA_ERROR_FABRIC_NOT_READY", 999: "CUDA_ERROR_UNKNOWN",
}


def cuda_error_name(code: int) -> str:
    """The CUresult name of `code`, or "CUDA error <code>" for a code this table does not know."""
    return CURESULT_NAMES.get(code, f"CUDA error {code}")


# --- library status codes --------------------------------------------------------------------
class OpErrorTable:
    """One library's operation error codes: code -> name, header string and explanation.

    `entries` are the (code, name, header string) triples of the ABI module; `unknown_name`
    formats the name of a code the header does not define, `unknown` explains it.
    """

    def __init__(self, entries: tuple[tuple[int, str, str], ...], explanations: dict[int, str], *,
                 unknown_name: str, unknown: str) -> None:
        self.names = {code: name for code, name, _ in entries}
        self.strings = {code: text for code, _, text in entries}
        self.explanations = explanations
        self._unknown_name, self._unknown = unknown_name, unknown

    def name(self, code: int) -> str:
        """The name of `code` (sign ignored)."""
        code = abs(code)
        return self.names.get(code) or self._unknown_name.format(code=code)

    def explain(self, code: int) -> str:
        """The header's description plus the likely cause and fix of `code` (sign ignored)."""
        code = abs(code)
        if code not in self.names:
            return self._unknown.format(code=code)
        return f"{self.strings[code]}: {self.explanations[code]}"


_POSIX_FALLBACK = "or use engine='auto' (falls back to POSIX) or engine='posix'"

#: CUfileOpError code -> what it usually means on a real system and what to do about it.
EXPLANATIONS: dict[int, str] = {
    0: "The call succeeded.",
    5001: "The cuFile driver is not open, or the nvidia-fs kernel module is not loaded while compatibility "
          "mode is off. Open the driver first (pygds.Driver), load nvidia-fs (`modprobe nvidia-fs`) for true "
          "GPUDirect Storage, or allow compatibility mode (\"allow_compat_mode\": true in cufile.json or "
          f"CUFILE_PARAM_PROPERTIES_ALLOW_COMPAT_MODE), {_POSIX_FALLBACK}.",
    5002: "A driver property set before cuFileDriverOpen is invalid (for example zero, or not a multiple of "
          "4 KiB). Check the values given to the cuFileDriverSet*/cuFileSetParameter* calls and in cufile.json.",
    5003: "A size limit (maximum direct I/O, device cache, pinned memory or poll threshold) is outside the range "
          "the driver supports. Query the allowed range with cuFileGetParameterMinMaxValue and pick a value "
          "inside it.",
    5004: "The nvidia-fs kernel module and this libcufile are incompatible versions. Install matching versions "
          f"(update the nvidia-fs package, or the CUDA toolkit / nvidia-cufile wheel), {_POSIX_FALLBACK}.",
    5005: "libcufile could not read the nvidia-fs driver version (/proc/driver/nvidia-fs/version). Check that "
          "nvidia-fs is loaded and that /proc is visible inside the container.",
    5006: "The cuFile driver is shutting down: cuFileDriverClose ran while this call was in flight. Finish or "
          "cancel I/O, and close files and buffers, before the last Driver reference is closed.",
    5007: "GPUDirect Storage does not support this platform (CPU architecture, kernel or virtualization). Allow "
          f"compatibility mode {_POSIX_FALLBACK}.",
    5008: "GPUDirect Storage cannot do I/O on this file: its file system or block device is not supported for "
          "GDS (for example overlayfs, tmpfs, a loop or device-mapper device) and compatibility mode is off. "
          "Put the file on a supported file system (ext4/xfs on local NVMe, Lustre, WekaFS, GPFS, BeeGFS, NFS "
          f"over RDMA), allow compatibility mode, {_POSIX_FALLBACK}.",
    5009: "This GPU does not support GPUDirect Storage (it needs a data-center or workstation GPU with BAR1 "
          f"mapping). Allow compatibility mode {_POSIX_FALLBACK}.",
    5010: "An ioctl to the nvidia-fs kernel module failed. Look at cufile.log and `dmesg` for nvidia-fs "
          "messages, and check that nvidia-fs was built for the running kernel and NVIDIA driver.",
    5011: "A CUDA driver call made by libcufile failed; the CUDA error says which. Common causes: no CUDA "
          "context on the calling thread, a lost or busy GPU, or a CUDA driver too old for this libcufile.",
    5012: "The buffer address is not a valid CUDA device pointer (freed memory, memory from another process, "
          "or host memory where device memory was expected). Pass live device memory, or register host memory "
          "with cuFileBufRegister.",
    5013: "cuFile does not accept this kind of memory here (for example managed memory, or pageable host "
          "memory where device or pinned memory is needed). Use cuMemAlloc/cudaMalloc memory or pinned host "
          "memory.",
    5014: "Buffer offset plus size run past the end of the CUDA allocation. Check the buffer's size, "
          "buf_offset and the request size.",
    5015: "The buffer belongs to a different CUDA context or device than the one current on this thread. Make "
          "the buffer's device current (torch.cuda.set_device, cuCtxSetCurrent) before the call.",
    5016: "Registering this buffer would exceed max_device_pinned_mem_size, the memory cuFile may pin through "
          "BAR1. Register fewer or smaller buffers, deregister unused ones, or raise "
          "CUFILE_PARAM_PROPERTIES_MAX_DEVICE_PINNED_MEM_SIZE_KB before the driver opens.",
    5017: "The I/O goes past the end of the registered buffer. Keep buf_offset + size within the length given "
          "to cuFileBufRegister.",
    5018: "The descriptor is not a regular file cuFile supports (a pipe, socket, directory or device), or the "
          "CUfileDescr_t was filled wrongly (its handle union sits at offset 8). Register a regular file's "
          "descriptor with type CU_FILE_HANDLE_TYPE_OPAQUE_FD.",
    5019: "The file was opened with flags cuFile does not support (such as O_APPEND), or without the access "
          "the operation needs. Open with O_RDONLY, O_WRONLY or O_RDWR (plus O_DIRECT for true GDS) and "
          "without O_APPEND.",
    5020: "The file was not opened with O_DIRECT, which GPUDirect Storage needs when compatibility mode is off. "
          "Open it with direct=True, or allow compatibility mode.",
    5022: "cuFile rejected an argument: a null pointer, a zero size, a bad offset or parameter, or a struct "
          "with the wrong layout. Check the values passed; in a batch every CUfileIOParams_t needs "
          "mode=CUFILE_BATCH and a registered file handle.",
    5023: "This buffer, or one overlapping it, is already registered with cuFileBufRegister. Register each "
          "allocation once and reuse it, or deregister it first.",
    5024: "The address is not a registered buffer: it was never registered, already deregistered, or is not "
          "the base address that was registered. Pass the exact registered base address.",
    5025: "Access to the nvidia-fs device (/dev/nvidia-fs*) or to the file was denied. Check the file's "
          "permissions and that the container has the /dev/nvidia-fs* devices with read/write access.",
    5026: "The cuFile driver is already open, so this setting can no longer change. Set parameters before the "
          "first cuFileDriverOpen (before any pygds.Driver opens) in this process.",
    5027: "The file handle is not registered: it was never registered or already deregistered, or "
          "cuFileHandleRegister could not classify the file's block device. In containers libcufile reads "
          "/run/udev/data/b<major>:<minor> for that; mount /run/udev read-only into the container. cufile.log "
          f"says \"unable to get volume attributes\" in that case. Otherwise register the file first, "
          f"{_POSIX_FALLBACK}.",
    5028: "This file descriptor is already registered with cuFile. Register each descriptor once, or open the "
          "file again for a second handle.",
    5029: "cuFile found no usable GPU: no CUDA device is visible (check nvidia-smi, CUDA_VISIBLE_DEVICES and "
          "the container's GPU access) or the NVIDIA driver is not loaded.",
    5030: "libcufile hit an internal failure. From cuFileHandleRegister it usually means libcufile could not "
          "work out the file's file system or block device and failed to build its file object: /run/udev is "
          "missing in a container, the device is a loop, device-mapper or overlay device, or the file system "
          "is not one GDS knows. cufile.log names the failing step. Fix: mount /run/udev read-only into the "
          "container, put the file on a supported local file system (ext4/xfs on NVMe), "
          f"{_POSIX_FALLBACK}.",
    5031: "libcufile could not open a new file descriptor (the per-process limit is reached, or the file was "
          "removed). Raise `ulimit -n` or close files.",
    5033: "The nvidia-fs driver is loaded but failed to initialise (for example the NVMe or RDMA driver did not "
          "register with it). Check `dmesg` and `gdscheck -p`, and reinstall nvidia-fs if needed.",
    5034: "GPUDirect Storage is disabled for this file by cufile.json (its file system, mount or path is "
          f"excluded). Change cufile.json, allow compatibility mode, {_POSIX_FALLBACK}.",
    5035: "cuFileBatchIOSubmit failed: an entry is malformed (mode must be CUFILE_BATCH, the handle registered, "
          "the size above zero) or there are more entries than the batch was set up for.",
    5036: "cuFile could not pin GPU memory for the buffer: BAR1 space or max_device_pinned_mem_size is used up. "
          "Register fewer or smaller buffers, or raise the pinned-memory limit; `nvidia-smi -q` shows the BAR1 "
          "size.",
    5037: "The batch queue is full: more operations than the batch was set up for, or than "
          "max_batch_io_size. Submit fewer operations per batch, or raise CUFILE_PARAM_PROPERTIES_IO_BATCHSIZE "
          "before the driver opens.",
    5038: "Stream (async) cuFile I/O is not supported here, for example in compatibility mode or on an "
          "unregistered stream. Use synchronous reads and writes on a thread pool instead.",
    5039: "Internal error while setting up a batch; retry later, with fewer operations if it persists. "
          "(libcufile 1.11-1.14 used 5039 for CU_FILE_IO_MAX_ERROR, an end-of-table marker that is never "
          "returned.)",
    5040: "Internal error while submitting a batch; retry later. libcufile also returns it when "
          "CUfileIOParams_t.mode is not CUFILE_BATCH (1).",
    5041: "Internal error while reading batch status (cuFileBatchIOGetStatus); retry the call. If it "
          "persists, the batch handle may already be destroyed: cancel and destroy it and submit a new batch.",
    5042: "Internal error while cancelling a batch (cuFileBatchIOCancel); retry the call. Requests that "
          "already completed stay completed; destroy the batch once cancel succeeds.",
    5043: "libcufile ran out of host memory or of its internal bounce buffers; retry later with fewer requests "
          "in flight, or give it more memory.",
    5044: "cuFile reported an I/O error. See cufile.log and `dmesg`; the storage device may be failing.",
    5045: "libcufile failed to register (pin and map) the buffer internally. See cufile.log; deregister unused "
          "buffers and retry with a smaller one.",
    5046: "libcufile's internal lookup table failed, usually after registering or deregistering the same buffer "
          "or file from several threads at once. Serialise registration.",
    5047: "There is no valid CUDA context on the calling thread (none was made current, or it was destroyed). "
          "Make a context current (retain the primary context, torch.cuda.set_device) before cuFile calls.",
    5048: "The nvidia-fs kernel module reported an internal error; see `dmesg` for nvidia-fs messages, and "
          "reload the module or fall back to compatibility mode if it repeats.",
    5049: "Batch I/O needs compatibility mode here (nvidia-fs is not in use) but compatibility mode is off. "
          "Allow compatibility mode or load nvidia-fs.",
    5050: "End-of-table marker of CUfileOpError, not a real error; a libcufile returning it is a bug.",
}


CUFILE_CODES = OpErrorTable(
    abi.CUFILEOP_STATUS_ENTRIES, EXPLANATIONS, unknown_name="CU_FILE_UNKNOWN_ERROR_{code}",
    unknown="{code} is not a CUfileOpError code of cufile.h in libcufile 1.20; a newer libcufile may define it. "
            "See cufile.log next to the program (or CUFILE_LOGFILE_PATH) for details.")
error_name = CUFILE_CODES.name
explain = CUFILE_CODES.explain


class LibraryCallError(PygdsError):
    """A cuFile or hipFile call failed with an operation error code, and for some codes a GPU runtime
    error. Subclasses name their code table, runtime (`runtime`, `runtime_name`) and the attribute
    names under which the runtime error is kept."""

    codes: OpErrorTable
    runtime = ""

    @staticmethod
    def runtime_name(code: int) -> str:
        raise NotImplementedError

    def __init__(self, op: str, code: int, runtime_err: int = 0, *, path: str | None = None) -> None:
        self.op = op
        self.code = abs(int(code))
        self.name = self.codes.name(self.code)
        self.explanation = self.codes.explain(self.code)
        self.runtime_err = int(runtime_err)
        self.runtime_err_name = self.runtime_name(self.runtime_err) if self.runtime_err else None
        self.path = path
        where = f" on {path}" if path else ""
        runtime = (f" {self.runtime} error: {self.runtime_err_name} ({self.runtime_err})."
                   if self.runtime_err else "")
        super().__init__(f"{op} failed{where}: {self.name} ({self.code}): {self.explanation}{runtime}")

    def __reduce__(self) -> tuple:
        return _rebuild, (type(self), (self.op, self.code, self.runtime_err), {"path": self.path})


class CuFileError(LibraryCallError):
    """A cuFile call failed with a CUfileOpError code (and, for 5011, a CUDA driver error: `cu_err`)."""

    codes = CUFILE_CODES
    runtime = "CUDA"
    runtime_name = staticmethod(cuda_error_name)

    @property
    def cu_err(self) -> int:
        return self.runtime_err

    @property
    def cu_err_name(self) -> str | None:
        return self.runtime_err_name


# --- hipFile status codes --------------------------------------------------------------------
#: hipError_t code -> name, as in hip_runtime_api.h of ROCm 7 (aliases left out).
HIP_ERROR_NAMES: dict[int, str] = {
    0: "hipSuccess", 1: "hipErrorInvalidValue", 2: "hipErrorOutOfMemory", 3: "hipErrorNotInitialized",
    4: "hipErrorDeinitialized", 5: "hipErrorProfilerDisabled", 6: "hipErrorProfilerNotInitialized",
    7: "hipErrorProfilerAlreadyStarted", 8: "hipErrorProfilerAlreadyStopped", 9: "hipErrorInvalidConfiguration",
    12: "hipErrorInvalidPitchValue", 13: "hipErrorInvalidSymbol", 17: "hipErrorInvalidDevicePointer",
    21: "hipErrorInvalidMemcpyDirection", 35: "hipErrorInsufficientDriver", 52: "hipErrorMissingConfiguration",
    53: "hipErrorPriorLaunchFailure", 98: "hipErrorInvalidDeviceFunction", 100: "hipErrorNoDevice",
    101: "hipErrorInvalidDevice", 200: "hipErrorInvalidImage", 201: "hipErrorInvalidContext",
    202: "hipErrorContextAlreadyCurrent", 205: "hipErrorMapFailed", 206: "hipErrorUnmapFailed",
    207: "hipErrorArrayIsMapped", 208: "hipErrorAlreadyMapped", 209: "hipErrorNoBinaryForGpu",
    210: "hipErrorAlreadyAcquired", 211: "hipErrorNotMapped", 212: "hipErrorNotMappedAsArray",
    213: "hipErrorNotMappedAsPointer", 214: "hipErrorECCNotCorrectable", 215: "hipErrorUnsupportedLimit",
    216: "hipErrorContextAlreadyInUse", 217: "hipErrorPeerAccessUnsupported", 218: "hipErrorInvalidKernelFile",
    219: "hipErrorInvalidGraphicsContext", 300: "hipErrorInvalidSource", 301: "hipErrorFileNotFound",
    302: "hipErrorSharedObjectSymbolNotFound", 303: "hipErrorSharedObjectInitFailed",
    304: "hipErrorOperatingSystem", 400: "hipErrorInvalidHandle", 401: "hipErrorIllegalState",
    500: "hipErrorNotFound", 600: "hipErrorNotReady", 700: "hipErrorIllegalAddress",
    701: "hipErrorLaunchOutOfResources", 702: "hipErrorLaunchTimeOut", 704: "hipErrorPeerAccessAlreadyEnabled",
    705: "hipErrorPeerAccessNotEnabled", 708: "hipErrorSetOnActiveProcess", 709: "hipErrorContextIsDestroyed",
    710: "hipErrorAssert", 712: "hipErrorHostMemoryAlreadyRegistered", 713: "hipErrorHostMemoryNotRegistered",
    719: "hipErrorLaunchFailure", 720: "hipErrorCooperativeLaunchTooLarge", 801: "hipErrorNotSupported",
    900: "hipErrorStreamCaptureUnsupported", 901: "hipErrorStreamCaptureInvalidated",
    902: "hipErrorStreamCaptureMerge", 903: "hipErrorStreamCaptureUnmatched", 904: "hipErrorStreamCaptureUnjoined",
    905: "hipErrorStreamCaptureIsolation", 906: "hipErrorStreamCaptureImplicit", 907: "hipErrorCapturedEvent",
    908: "hipErrorStreamCaptureWrongThread", 910: "hipErrorGraphExecUpdateFailure",
    911: "hipErrorInvalidChannelDescriptor", 912: "hipErrorInvalidTexture", 999: "hipErrorUnknown",
    1052: "hipErrorRuntimeMemory", 1053: "hipErrorRuntimeOther",
}


def hip_error_name(code: int) -> str:
    """The hipError_t name of `code`, or "HIP error <code>" for a code this table does not know."""
    return HIP_ERROR_NAMES.get(code, f"HIP error {code}")


_AIS_CHECK = "run /opt/rocm/bin/ais-check (or `pygds info`) to see which part of the AIS stack is missing"

#: hipFileOpError code -> what it usually means with hipFile on ROCm and what to do about it.
HIPFILE_EXPLANATIONS: dict[int, str] = {
    0: "The call succeeded.",
    5001: "The hipFile driver is not open (never opened, or closed as often as it was opened). Open it "
          "first (pygds.engines.hipfile.HipFileDriver, or a pygds.File with engine='hipfile' does it).",
    5002: "A driver property is invalid. hipFile does not implement its property setters yet; leave them "
          "at their defaults.",
    5003: "A driver property value is outside the range hipFile supports.",
    5004: "hipFile and the GPU I/O driver disagree on versions. Install matching ROCm (>= 7.2) and "
          f"amdgpu-dkms (>= 30.20.1) packages, {_POSIX_FALLBACK}.",
    5005: "hipFile could not read the version of the GPU I/O driver (amdgpu). Check that amdgpu is loaded "
          "and /sys and /proc are visible inside the container.",
    5006: "The hipFile driver is closing, or was already closed when a buffer was deregistered. Finish I/O and "
          "deregister buffers before the last driver reference is closed.",
    5007: f"hipFile does not support this platform. {_AIS_CHECK}, {_POSIX_FALLBACK}.",
    5008: "hipFile cannot do I/O on this file or handle type: it registers only plain file descriptors "
          "(hipFileHandleTypeOpaqueFD) of regular files and block devices. Use such a file, "
          f"{_POSIX_FALLBACK}.",
    5009: "This GPU cannot use hipFile's fastpath (for example an SR-IOV virtual function, which only gets the "
          f"compatibility path). Run on a physical function, {_POSIX_FALLBACK}.",
    5010: "The GPU I/O driver (amdgpu's AIS path in KFD) reported an error; see `dmesg` for amdgpu/kfd "
          "messages.",
    5011: "A HIP runtime call made by hipFile failed; the HIP error says which. Common causes: no AMD GPU "
          "visible (HIP_VISIBLE_DEVICES, /dev/kfd and /dev/dri not passed into the container, or the user "
          "not in the render and video groups), a lost GPU, or a HIP runtime older than this hipFile.",
    5012: "The address is not valid GPU memory for hipFile (freed, from another process, or not HIP memory). "
          "Pass live hipMalloc/torch memory.",
    5013: "hipFile does not accept this kind of memory: it takes device memory, and pinned host memory only "
          "once registered with hipFileBufRegister; pageable host and managed memory are refused. pygds "
          "moves unregistered host memory with POSIX I/O itself.",
    5014: "Buffer offset plus size run past the end of the HIP allocation (or of the registered range). Check "
          "the buffer's size, buf_offset and the request size.",
    5015: "The buffer belongs to a different GPU than the one hipFile used. Select the buffer's device "
          "(torch.cuda.set_device / hipSetDevice) before the call.",
    5016: "The I/O goes past the end of the pinned (registered) buffer. Keep buf_offset + size within the "
          "registered length.",
    5017: "The I/O goes past the end of the mapped buffer. Keep buf_offset + size within the registered "
          "length.",
    5018: "hipFile does not support this file type: its fastpath takes regular files and block devices only.",
    5019: "The file was opened with flags hipFile does not support (such as O_APPEND) or without the access "
          "the operation needs. Open with O_RDONLY, O_WRONLY or O_RDWR (plus O_DIRECT for the fastpath).",
    5020: "The file was not opened with O_DIRECT, which hipFile's fastpath needs when compatibility mode is "
          "off. Open it with direct=True, or allow compatibility mode (HIPFILE_ALLOW_COMPAT_MODE=true).",
    5022: "hipFile rejected an argument: a null pointer, a zero size, a negative offset, a batch entry that is "
          "not mode=hipFileBatch, or host memory passed without registering it with an explicit size.",
    5023: "This buffer is already registered with hipFileBufRegister. Register each allocation once and "
          "reuse it, or deregister it first.",
    5024: "The address is not a registered buffer: never registered, already deregistered, or not the base "
          "address that was registered. Pass the exact registered base address.",
    5025: "Access to the GPU (/dev/kfd, /dev/dri) or to the file was denied. Add the user to the render and "
          "video groups, pass --device=/dev/kfd --device=/dev/dri into containers, and check the file's "
          "permissions.",
    5026: "The hipFile driver is already open, so this setting can no longer change. Set it before the first "
          "hipFileDriverOpen in this process.",
    5027: "The file handle is not registered: never registered or already deregistered. Register the file "
          "first (a pygds.File does).",
    5028: "This file descriptor is already registered with hipFile. Register each descriptor once, or open "
          "the file again for a second handle.",
    5029: "hipFile found no usable AMD GPU: none is visible (check `amd-smi list` or `rocm-smi`, "
          "HIP_VISIBLE_DEVICES, and /dev/kfd access) or amdgpu is not loaded.",
    5030: "hipFile hit an internal error. The calls hipfile.h documents as not implemented (driver "
          "properties, poll mode, size limits, hipFileGet/SetParameter*) always return it; elsewhere it marks "
          "an unexpected failure inside hipFile, such as no backend accepting the I/O or a buffer deregistered "
          f"while I/O was outstanding. See syslog, {_POSIX_FALLBACK}.",
    5031: "hipFile could not open a new file descriptor (the per-process limit is reached, or the file was "
          "removed). Raise `ulimit -n` or close files.",
    5033: f"The GPU I/O driver failed to initialise (amdgpu's AIS hook or P2PDMA is not up). {_AIS_CHECK}.",
    5034: "GPU I/O is disabled for this file by configuration. Use engine='auto' (falls back to POSIX) or "
          "engine='posix'.",
    5035: "hipFileBatchIOSubmit failed: an entry is malformed (mode must be hipFileBatch, the handle "
          "registered, the size above zero) or there are more entries than the batch was set up for.",
    5036: "hipFile could not pin GPU memory for the buffer. Register fewer or smaller buffers.",
    5037: "The batch queue is full: more operations than the batch was set up for. Submit fewer per batch.",
    5038: "Stream (async) hipFile I/O is not supported here (before hipFile 0.5 the AMD backend had none). "
          "Use synchronous reads and writes on a thread pool instead; pygds does so itself.",
    5039: "End-of-table marker of hipFileOpError, not a real error; a libhipfile returning it is a bug.",
}


HIPFILE_CODES = OpErrorTable(
    hip_abi.HIPFILE_OP_ERRORS, HIPFILE_EXPLANATIONS, unknown_name="hipFileUnknownError{code}",
    unknown="{code} is not a hipFileOpError code of hipfile.h; a newer libhipfile may define it. "
            "See syslog for hipFile's messages.")
hipfile_error_name = HIPFILE_CODES.name
explain_hipfile = HIPFILE_CODES.explain


class HipFileError(LibraryCallError):
    """A hipFile call failed with a hipFileOpError code (and, for 5011, a HIP runtime error: `hip_err`)."""

    codes = HIPFILE_CODES
    runtime = "HIP"
    runtime_name = staticmethod(hip_error_name)

    @property
    def hip_err(self) -> int:
        return self.runtime_err

    @property
    def hip_err_name(self) -> str | None:
        return self.runtime_err_name


#: errno -> what it means for a read or write, and what to do; the one home of this advice.
_ERRNO_ADVICE: dict[int, str] = {
    _errno.ENOSPC: "the file system is full; free space on it or write elsewhere",
    _errno.EDQUOT: "the disk quota is used up; free space within it or raise the quota",
    _errno.EBADF: "the descriptor is closed or lacks the access this operation needs (read vs write); "
                  "open the file in a mode that allows it",
    _errno.EINVAL: "an invalid argument; with O_DIRECT, offsets, sizes and buffer addresses must be aligned "
                   "to the logical block size: try without direct=True",
    _errno.EIO: "a low-level I/O error (a failing device, or a transfer libcufile could not finish; "
                "libcufile 1.15 also reports a write through a read-only descriptor so); check the device "
                "(dmesg), the file system and cufile.log",
    _errno.EFAULT: "the buffer address is not accessible memory",
    _errno.EROFS: "the file system is mounted read-only; remount it read-write or use another path",
    _errno.EACCES: "permission denied; check the file's permissions",
    _errno.EPERM: "operation not permitted; check the file's permissions and attributes (chattr)",
    _errno.EISDIR: "the path is a directory; pass the path of a file",
    _errno.ESPIPE: "the file cannot be read or written at an offset (a pipe, FIFO or socket); pass a regular "
                   "file or a block device",
    _errno.EAGAIN: "the resource is temporarily unavailable; retry",
    _errno.EINTR: "interrupted by a signal; retry",
    _errno.ECANCELED: "the request was cancelled",
    _errno.ETIMEDOUT: "the request timed out",
}


def _file_size_limit() -> int | None:
    """The process's RLIMIT_FSIZE in bytes, or None when unlimited (or unknown on this platform)."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def errno_advice(code: int, *, end: int | None = None) -> str | None:
    """What `code` means for a read or write, with the fix; None for an errno without advice.

    `end` is the file offset the request would reach: EFBIG is blamed on `ulimit -f` only when
    that limit is set and the request passes it, else on the file system's maximum file size.
    """
    if code != _errno.EFBIG:
        return _ERRNO_ADVICE.get(code)
    limit = _file_size_limit()
    if limit is not None and (end is None or end > limit):
        return (f"the process's file-size limit (ulimit -f / RLIMIT_FSIZE) is {limit} bytes; raise it "
                "or write less")
    reach = f" (the request ends at byte {end})" if end is not None else ""
    return (f"the write would pass the largest file size the file system allows{reach}; write at a "
            "smaller offset, or use a file system that allows larger files")


class IOFailedError(PygdsError, OSError):
    """A read or write failed with an OS error; carries `errno`, `op` and `path` (also `filename`)."""

    def __init__(self, errno: int, message: str | None = None, *, op: str | None = None,
                 path: str | None = None) -> None:
        strerror = os.strerror(errno) if errno else "unknown error"
        OSError.__init__(self, errno, strerror, path)
        self.op = op
        self.path = path
        if message is None:
            where = f" on {path}" if path else ""
            hint = errno_advice(errno)
            name = _errno.errorcode.get(errno, str(errno))
            message = f"{op or 'I/O'} failed{where}: [{name}] {strerror}" + (f" ({hint})" if hint else "")
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        return _rebuild, (IOFailedError, (self.errno, self.message), {"op": self.op, "path": self.path})


def _rebuild(cls: type, args: tuple, kwargs: dict) -> PygdsError:
    """Unpickle an exception whose constructor takes keyword-only arguments."""
    return cls(*args, **kwargs)


def check_status(op: str, status: abi.CUfileError_t, *, path: str | None = None) -> None:
    """Raise `CuFileError` for a failed `CUfileError_t` (err != CU_FILE_SUCCESS)."""
    if status.err != abi.CU_FILE_SUCCESS:
        raise CuFileError(op, status.err, status.cu_err, path=path)


def check_hipfile_status(op: str, status: hip_abi.hipFileError_t, *, path: str | None = None) -> None:
    """Raise `HipFileError` for a failed `hipFileError_t` (err != hipFileSuccess)."""
    if status.err != hip_abi.hipFileSuccess:
        raise HipFileError(op, status.err, status.hip_drv_err, path=path)


def _error_for(op: str, code: int, path: str | None, error: type = CuFileError) -> PygdsError:
    """The exception for a positive error `code`: a library code above 5000 (as `error`), else an errno."""
    if code > abi.CUFILEOP_BASE_ERR:
        return error(op, code, path=path)
    return IOFailedError(code, op=op, path=path)


def decode_io_result(op: str, ret: int, err: int, *, path: str | None = None, error: type = CuFileError) -> int:
    """Bytes moved by cuFileRead/Write/Readv/Writev (and async bytes-done), or raise why not.

    `ret >= 0` is bytes. `ret == -1` means `err` (the call's errno, from `ctypes.get_errno()` with
    `use_errno=True`) says why; libcufile has been seen putting a CUfileOpError code there too.
    Other negatives are a negative CUfileOpError, or a negative errno (async calls report -EIO so).
    hipFileRead/Write follow the same rules; pass `error=HipFileError` to name their codes. (hipFile
    0.2 can also return a negated hipError_t for a failed HIP call, which reads as an errno here.)
    """
    if ret >= 0:
        return ret
    raise _error_for(op, (err or _errno.EIO) if ret == -1 else -ret, path, error)


def signed_size(value: int) -> int:
    """A `size_t` read from C, reinterpreted as the signed value it carries (batch event `ret`)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


_EVENT_ERRNO: dict[int, int] = {
    abi.CUFILE_CANCELED: _errno.ECANCELED,
    abi.CUFILE_TIMEOUT: _errno.ETIMEDOUT,
    abi.CUFILE_INVALID: _errno.EINVAL,
    abi.CUFILE_FAILED: _errno.EIO,
}


def decode_batch_event(op: str, status: int, ret: int, *, path: str | None = None) -> int:
    """Bytes done by one finished batch request (`CUfileIOEvents_t`), or raise why it did not finish.

    A negative `ret` (the size_t holds -errno or -CUfileOpError) raises `IOFailedError` or
    `CuFileError`; a failed, invalid, timed-out or cancelled status with no error code raises
    `IOFailedError` with EIO, EINVAL, ETIMEDOUT or ECANCELED. A request still waiting or pending
    is a caller error (`InvalidArgumentError`).
    """
    value = signed_size(ret)
    if value < 0:
        raise _error_for(op, -value, path)
    if status == abi.CUFILE_COMPLETE:
        return value
    if status in _EVENT_ERRNO:
        name = abi.CUfileStatus_t(status).name
        raise IOFailedError(_EVENT_ERRNO[status], op=op, path=path,
                            message=f"{op} request ended with {name}"
                                    + (f" on {path}" if path else "")
                                    + f" after {value} bytes")
    if status in (abi.CUFILE_WAITING, abi.CUFILE_PENDING):
        raise InvalidArgumentError(f"{op}: the request has not finished (status "
                                   f"{abi.CUfileStatus_t(status).name}); wait for it before decoding")
    raise InvalidArgumentError(f"{op}: unknown batch status {status:#x}")
