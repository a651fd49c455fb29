"""cuFile status codes, CUDA error names, and the decoding of cuFile results into exceptions."""
from __future__ import annotations

import ctypes
import errno
import os

import pytest

from pygds import _cufile_abi as abi
from pygds import errors
from pygds._lib import CuFileLib, find_library
from pygds.errors import (CuFileError, FileClosedError, InvalidArgumentError, IOFailedError, PygdsError,
                          UnsupportedBufferError, check_status, decode_batch_event, decode_io_result,
                          error_name, explain)

CODES = [code for code, _, _ in abi.CUFILEOP_STATUS_ENTRIES]


@pytest.mark.parametrize("code", CODES)
def test_every_code_has_its_name_and_a_human_explanation(code: int) -> None:
    header_name = abi.CUfileOpError(code).name
    header_text = dict((c, t) for c, _, t in abi.CUFILEOP_STATUS_ENTRIES)[code]
    assert error_name(code) == header_name
    assert error_name(-code) == header_name
    text = explain(code)
    assert text.startswith(header_text + ": ")
    # The explanation adds cause and fix beyond the header's few words.
    assert len(errors.EXPLANATIONS[code]) > 2 * len(header_text) or code in (0, 5050)


def test_explanations_cover_exactly_the_header_codes() -> None:
    assert set(errors.EXPLANATIONS) == set(CODES)
    assert len(CODES) == 49


def test_5030_says_what_to_do() -> None:
    assert error_name(5030) == "CU_FILE_INTERNAL_ERROR"
    text = explain(5030)
    assert "internal error" in text
    for hint in ("cuFileHandleRegister", "/run/udev", "cufile.log", "engine='posix'", "engine='auto'"):
        assert hint in text


def test_unknown_codes_are_named_and_explained() -> None:
    assert error_name(5021) == "CU_FILE_UNKNOWN_ERROR_5021"
    assert "not a CUfileOpError code" in explain(5021)
    err = CuFileError("cuFileRead", 5021)
    assert err.name == "CU_FILE_UNKNOWN_ERROR_5021" and "5021" in str(err)


def test_cuda_error_names_match_cuda_python() -> None:
    from cuda.bindings import driver

    known = {int(m): m.name for m in driver.CUresult}
    for code, name in errors.CURESULT_NAMES.items():
        assert known[code] == name
    assert errors.cuda_error_name(100) == "CUDA_ERROR_NO_DEVICE"
    assert errors.cuda_error_name(123456) == "CUDA error 123456"


def test_cufile_error_carries_everything() -> None:
    err = CuFileError("cuFileBufRegister", 5011, 2, path="/data/x")
    assert (err.op, err.code, err.name, err.cu_err, err.cu_err_name, err.path) == (
        "cuFileBufRegister", 5011, "CU_FILE_CUDA_DRIVER_ERROR", 2, "CUDA_ERROR_OUT_OF_MEMORY", "/data/x")
    assert err.explanation == explain(5011)
    text = str(err)
    assert text.startswith("cuFileBufRegister failed on /data/x: CU_FILE_CUDA_DRIVER_ERROR (5011): ")
    assert "CUDA error: CUDA_ERROR_OUT_OF_MEMORY (2)" in text
    assert isinstance(err, PygdsError)
    plain = CuFileError("cuFileDriverOpen", 5001)
    assert plain.cu_err == 0 and plain.cu_err_name is None and "CUDA error" not in str(plain)


def test_check_status() -> None:
    check_status("cuFileDriverOpen", abi.CUfileError_t(0, 0))
    with pytest.raises(CuFileError) as info:
        check_status("cuFileHandleRegister", abi.CUfileError_t(5030, 0), path="/f")
    assert info.value.code == 5030 and info.value.path == "/f"
    assert "cuFileHandleRegister failed on /f: CU_FILE_INTERNAL_ERROR (5030)" in str(info.value)


def test_check_status_on_a_real_libcufile_failure() -> None:
    # cuFileGetVersion(NULL) fails with CU_FILE_INVALID_VALUE without touching the driver.
    lib = CuFileLib(find_library(environ={}, use_loader=False).path, source="wheel")
    with pytest.raises(CuFileError) as info:
        check_status("cuFileGetVersion", lib.cuFileGetVersion(None))
    assert info.value.name == "CU_FILE_INVALID_VALUE" and info.value.code == 5022


# --- read/write return values ----------------------------------------------------------------
def test_bytes_pass_through() -> None:
    assert decode_io_result("cuFileRead", 0, 0) == 0
    assert decode_io_result("cuFileRead", 4096, errno.EIO) == 4096
    assert decode_io_result("cuFileWrite", 1 << 40, 0) == 1 << 40


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EBADF, errno.EINVAL, errno.EIO])
def test_minus_one_means_errno(err: int) -> None:
    with pytest.raises(IOFailedError) as info:
        decode_io_result("cuFileWrite", -1, err, path="/data/f")
    exc = info.value
    assert isinstance(exc, OSError) and isinstance(exc, PygdsError)
    assert (exc.errno, exc.strerror, exc.filename, exc.op, exc.path) == (
        err, os.strerror(err), "/data/f", "cuFileWrite", "/data/f")
    assert str(exc).startswith(f"cuFileWrite failed on /data/f: [{errno.errorcode[err]}] {os.strerror(err)}")


def test_minus_one_without_errno_is_eio() -> None:
    with pytest.raises(IOFailedError) as info:
        decode_io_result("cuFileRead", -1, 0)
    assert info.value.errno == errno.EIO


def test_minus_one_with_a_cufile_code_in_errno() -> None:
    with pytest.raises(CuFileError) as info:
        decode_io_result("cuFileRead", -1, 5027)
    assert info.value.name == "CU_FILE_HANDLE_NOT_REGISTERED"


@pytest.mark.parametrize("code", [5027, 5030, 5022, 5014])
def test_negative_cufile_codes(code: int) -> None:
    with pytest.raises(CuFileError) as info:
        decode_io_result("cuFileRead", -code, 0, path="/p")
    assert info.value.code == code and info.value.name == error_name(code) and info.value.path == "/p"


def test_negative_errno_values() -> None:
    # A failed async call reports bytes-done -5 (-EIO).
    with pytest.raises(IOFailedError) as info:
        decode_io_result("cuFileReadAsync", -errno.EIO, 0)
    assert info.value.errno == errno.EIO
    with pytest.raises(IOFailedError) as info:
        decode_io_result("cuFileRead", -errno.EINVAL, 0)
    assert info.value.errno == errno.EINVAL


def test_decoding_real_failed_syscalls(tmp_path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.pwrite.restype = ctypes.c_ssize_t
    libc.pwrite.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
    data = ctypes.create_string_buffer(b"x" * 16)

    path = tmp_path / "ro"
    path.write_bytes(b"hello")
    fd = os.open(path, os.O_RDONLY)
    try:
        ret = libc.pwrite(fd, data, 16, 0)
        with pytest.raises(IOFailedError) as info:
            decode_io_result("pwrite", ret, ctypes.get_errno(), path=str(path))
    finally:
        os.close(fd)
    assert info.value.errno == errno.EBADF and "read vs write" in str(info.value)

    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        ret = libc.pwrite(fd, data, 16, 0)
        with pytest.raises(IOFailedError) as info:
            decode_io_result("pwrite", ret, ctypes.get_errno(), path="/dev/full")
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC and "file system is full" in str(info.value)


# --- batch events ----------------------------------------------------------------------------
def test_signed_size() -> None:
    assert errors.signed_size(5) == 5
    assert errors.signed_size(2**64 - 5) == -5
    assert errors.signed_size(ctypes.c_size_t(-5022).value) == -5022


def test_batch_events() -> None:
    assert decode_batch_event("cuFileBatchIO", abi.CUFILE_COMPLETE, 1 << 20) == 1 << 20
    with pytest.raises(IOFailedError) as info:
        decode_batch_event("cuFileBatchIO", abi.CUFILE_FAILED, 2**64 - errno.EIO, path="/b")
    assert info.value.errno == errno.EIO and info.value.path == "/b"
    with pytest.raises(CuFileError) as info:
        decode_batch_event("cuFileBatchIO", abi.CUFILE_FAILED, 2**64 - 5022)
    assert info.value.code == 5022
    for status, err in ((abi.CUFILE_FAILED, errno.EIO), (abi.CUFILE_CANCELED, errno.ECANCELED),
                        (abi.CUFILE_TIMEOUT, errno.ETIMEDOUT), (abi.CUFILE_INVALID, errno.EINVAL)):
        with pytest.raises(IOFailedError) as info:
            decode_batch_event("cuFileBatchIO", status, 0)
        assert info.value.errno == err
        assert abi.CUfileStatus_t(status).name in str(info.value)
    with pytest.raises(InvalidArgumentError, match="has not finished"):
        decode_batch_event("cuFileBatchIO", abi.CUFILE_PENDING, 0)


# --- the exception classes -------------------------------------------------------------------
def test_hierarchy() -> None:
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(UnsupportedBufferError, TypeError)
    assert issubclass(FileClosedError, ValueError)
    assert issubclass(IOFailedError, OSError)
    for cls in (errors.LibraryNotFoundError, errors.NotSupportedError, errors.DriverUnavailableError,
                CuFileError, InvalidArgumentError, UnsupportedBufferError, FileClosedError, IOFailedError):
        assert issubclass(cls, PygdsError)


def test_io_failed_error_with_a_message() -> None:
    exc = IOFailedError(errno.EBADF, "cannot write to /f: it was opened read-only", path="/f")
    assert str(exc) == "cannot write to /f: it was opened read-only"
    assert exc.errno == errno.EBADF and exc.filename == "/f" and exc.strerror == os.strerror(errno.EBADF)
    with pytest.raises(OSError):
        raise exc


def test_exceptions_survive_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(CuFileError("cuFileRead", 5011, 2, path="/f")))
    assert (err.op, err.code, err.cu_err, err.path, str(err)) == (
        "cuFileRead", 5011, 2, "/f", str(CuFileError("cuFileRead", 5011, 2, path="/f")))
    exc = pickle.loads(pickle.dumps(IOFailedError(errno.ENOSPC, op="cuFileWrite", path="/f")))
    assert (exc.errno, exc.op, exc.path, exc.filename) == (errno.ENOSPC, "cuFileWrite", "/f", "/f")
    assert str(exc) == str(IOFailedError(errno.ENOSPC, op="cuFileWrite", path="/f"))


def test_errno_advice_has_one_home() -> None:
    """`File`'s OS-error messages and `IOFailedError`'s own carry the same advice, from errors.py."""
    from pygds.file import _os_failure

    advice = errors.errno_advice(errno.ENOSPC)
    assert advice and "free space" in advice
    assert str(IOFailedError(errno.ENOSPC, op="write", path="/f")).endswith(f"({advice})")
    assert str(_os_failure(OSError(errno.ENOSPC, "full"), "write", "/f", 0, 1, 0)).endswith(advice)
    assert errors.errno_advice(errno.ENOLINK) is None
