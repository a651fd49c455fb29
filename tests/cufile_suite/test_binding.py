"""The raw binding against the real libcufile: `pygds._lib.cufile()` and `_cufile_abi` only.

Runs under the stand-in CUDA driver (compatibility mode) via tests/test_cufile_on_standin.py, or on
a GPU machine with PYGDS_TEST_CUFILE=1. Values read through structs are cross-checked against the
parameter API, so a wrong field offset shows up as a mismatch, not as a plausible number. Where
libcufile versions differ (seen alike on the stand-in and on an H200), the test names the version.
"""
from __future__ import annotations

import ctypes
import errno
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from pygds import _cufile_abi as abi
from pygds._lib import CuFileLib, cufile
from pygds.driver import close_shared
from pygds.errors import (CuFileError, IOFailedError, PygdsError, check_status, decode_batch_event,
                          decode_io_result)

MiB = 1 << 20
PROPERTIES_FOLLOW_PARAMETERS = 1170
"""From libcufile 1.17 on, cuFileDriverOpen applies the parameters staged before it and the
properties report per_buffer_cache_size; 1.15 and 1.16 open with their own values whatever was
staged, and leave per_buffer_cache_size 0."""
LIBCUFILE_1_16 = 1160
"""libcufile 1.15 fails two error paths differently from 1.16 on: a write through a read-only
descriptor is tried anyway (EBADF underneath) and reported as EIO, not as 5019 in errno; a read
through a deregistered handle drops the driver's use count by one."""


@pytest.fixture()
def lib() -> CuFileLib:
    close_shared()  # the reference pygds's files share, from earlier tests in this process
    lib = cufile()
    assert lib.cuFileUseCount() == 0, "a previous test left the cuFile driver open"
    return lib


@pytest.fixture()
def driver(lib: CuFileLib) -> Iterator[CuFileLib]:
    check_status("cuFileDriverOpen", lib.cuFileDriverOpen())
    yield lib
    check_status("cuFileDriverClose_v2", lib.cuFileDriverClose_v2())
    assert lib.cuFileUseCount() == 0


def _register(lib: CuFileLib, fd: int) -> abi.CUfileHandle_t:
    descr = abi.CUfileDescr_t()
    descr.type = abi.CU_FILE_HANDLE_TYPE_OPAQUE_FD
    descr.handle.fd = fd
    handle = abi.CUfileHandle_t()
    check_status("cuFileHandleRegister", lib.cuFileHandleRegister(ctypes.byref(handle), ctypes.byref(descr)))
    assert handle.value
    return handle


def _size_param(lib: CuFileLib, param: int) -> int:
    out = ctypes.c_size_t()
    check_status("cuFileGetParameterSizeT", lib.cuFileGetParameterSizeT(param, ctypes.byref(out)))
    return out.value


def _bool_param(lib: CuFileLib, param: int) -> bool:
    out = ctypes.c_bool()
    check_status("cuFileGetParameterBool", lib.cuFileGetParameterBool(param, ctypes.byref(out)))
    return out.value


def _string_param(lib: CuFileLib, param: int) -> bytes:
    out = ctypes.create_string_buffer(256)
    check_status("cuFileGetParameterString", lib.cuFileGetParameterString(param, out, len(out)))
    return out.value


@pytest.fixture()
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(8 * MiB)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


def test_driver_open_close_and_use_count(lib: CuFileLib) -> None:
    check_status("cuFileDriverOpen", lib.cuFileDriverOpen())
    assert lib.cuFileUseCount() == 1
    check_status("cuFileDriverOpen", lib.cuFileDriverOpen())
    assert lib.cuFileUseCount() == 2
    check_status("cuFileDriverClose_v2", lib.cuFileDriverClose_v2())
    assert lib.cuFileUseCount() == 1
    check_status("cuFileDriverClose_v2", lib.cuFileDriverClose_v2())
    assert lib.cuFileUseCount() == 0
    with pytest.raises(CuFileError) as info:
        check_status("cuFileDriverClose_v2", lib.cuFileDriverClose_v2())
    assert info.value.name == "CU_FILE_DRIVER_NOT_INITIALIZED"
    assert lib.cuFileUseCount() == 0


def test_driver_properties_decode_to_the_parameter_values(driver: CuFileLib) -> None:
    props = abi.CUfileDrvProps_t()
    check_status("cuFileDriverGetProperties", driver.cuFileDriverGetProperties(ctypes.byref(props)))
    assert props.nvfs.poll_thresh_size == _size_param(driver, abi.CUFILE_PARAM_POLLTHRESHOLD_SIZE_KB)
    assert props.nvfs.max_direct_io_size == _size_param(driver, abi.CUFILE_PARAM_PROPERTIES_MAX_DIRECT_IO_SIZE_KB)
    assert props.max_device_cache_size == _size_param(driver, abi.CUFILE_PARAM_PROPERTIES_MAX_DEVICE_CACHE_SIZE_KB)
    per_buffer = _size_param(driver, abi.CUFILE_PARAM_PROPERTIES_PER_BUFFER_CACHE_SIZE_KB)
    # 1.15 and 1.16 report 0: the fields on either side, checked exactly, still pin its offset there
    assert per_buffer > 0
    assert props.per_buffer_cache_size == (per_buffer if driver.version >= PROPERTIES_FOLLOW_PARAMETERS else 0)
    # An unsigned int in the struct: libcufile truncates the size_t parameter to 32 bits.
    pinned = _size_param(driver, abi.CUFILE_PARAM_PROPERTIES_MAX_DEVICE_PINNED_MEM_SIZE_KB)
    assert props.max_device_pinned_mem_size == pinned & 0xFFFFFFFF
    assert props.max_batch_io_size == _size_param(driver, abi.CUFILE_PARAM_PROPERTIES_IO_BATCHSIZE)
    assert props.max_batch_io_timeout_msecs == _size_param(driver, abi.CUFILE_PARAM_PROPERTIES_BATCH_IO_TIMEOUT_MS)
    control = props.nvfs.dcontrolflags
    assert bool(control >> abi.CU_FILE_USE_POLL_MODE & 1) == _bool_param(
        driver, abi.CUFILE_PARAM_PROPERTIES_USE_POLL_MODE)
    assert bool(control >> abi.CU_FILE_ALLOW_COMPAT_MODE & 1) == _bool_param(
        driver, abi.CUFILE_PARAM_PROPERTIES_ALLOW_COMPAT_MODE)
    assert props.fflags >> abi.CU_FILE_BATCH_IO_SUPPORTED & 1
    assert props.nvfs.max_direct_io_size > 0 and props.max_batch_io_size > 0


def test_parameters_staged_then_applied(lib: CuFileLib) -> None:
    """Parameters set before the open read back at once; the open applies them where libcufile does
    (1.17 on). 1.15 and 1.16 open with their own max_direct_io_size whatever was staged: 16384 on an
    H200 with 2048 staged (1.15), 1024 on a 2-core machine under the stand-in."""
    param = abi.CUFILE_PARAM_PROPERTIES_MAX_DIRECT_IO_SIZE_KB
    low, high = ctypes.c_size_t(), ctypes.c_size_t()
    check_status("cuFileGetParameterMinMaxValue",
                 lib.cuFileGetParameterMinMaxValue(param, ctypes.byref(low), ctypes.byref(high)))
    assert 0 < low.value < 2048 <= high.value

    check_status("cuFileSetParameterSizeT", lib.cuFileSetParameterSizeT(param, 2048))
    assert _size_param(lib, param) == 2048
    poll = abi.CUFILE_PARAM_PROPERTIES_USE_POLL_MODE
    check_status("cuFileSetParameterBool", lib.cuFileSetParameterBool(poll, True))
    assert _bool_param(lib, poll) is True
    level = abi.CUFILE_PARAM_LOGGING_LEVEL
    check_status("cuFileSetParameterString", lib.cuFileSetParameterString(level, b"INFO"))
    assert _string_param(lib, level) == b"INFO"

    check_status("cuFileDriverOpen", lib.cuFileDriverOpen())
    try:
        props = abi.CUfileDrvProps_t()
        check_status("cuFileDriverGetProperties", lib.cuFileDriverGetProperties(ctypes.byref(props)))
        if lib.version >= PROPERTIES_FOLLOW_PARAMETERS:
            assert props.nvfs.max_direct_io_size == 2048 == _size_param(lib, param)
            assert props.nvfs.dcontrolflags >> abi.CU_FILE_USE_POLL_MODE & 1
        else:
            assert props.nvfs.max_direct_io_size not in (0, 2048)
        with pytest.raises(CuFileError) as info:
            check_status("cuFileSetParameterSizeT", lib.cuFileSetParameterSizeT(param, 4096))
        assert info.value.name == "CU_FILE_DRIVER_ALREADY_OPEN" and info.value.code == 5026
    finally:
        check_status("cuFileDriverClose_v2", lib.cuFileDriverClose_v2())


def test_round_trip_through_a_registered_handle(driver: CuFileLib, data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    fd = os.open(path, os.O_RDWR)
    handle = _register(driver, fd)
    try:
        payload = os.urandom(MiB + 123)
        src = ctypes.create_string_buffer(b"\0" * 3 + payload)
        ret = driver.cuFileWrite(handle, src, len(payload), 4097, 3)
        assert decode_io_result("cuFileWrite", ret, ctypes.get_errno(), path=str(path)) == len(payload)
        assert os.pread(fd, len(payload), 4097) == payload

        dst = ctypes.create_string_buffer(len(payload) + 11)
        ret = driver.cuFileRead(handle, dst, len(payload), 4097, 11)
        assert decode_io_result("cuFileRead", ret, ctypes.get_errno()) == len(payload)
        assert dst.raw[11:] == payload

        tail = ctypes.create_string_buffer(4096)
        ret = driver.cuFileRead(handle, tail, 4096, len(data) - 100, 0)
        assert decode_io_result("cuFileRead", ret, ctypes.get_errno()) == 100  # short read at end of file
        assert tail.raw[:100] == data[-100:]
        assert decode_io_result("cuFileRead", driver.cuFileRead(handle, tail, 4096, len(data) + 4096, 0), 0) == 0
    finally:
        driver.cuFileHandleDeregister(handle)
        os.close(fd)


def test_registered_host_buffer(driver: CuFileLib, data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    fd = os.open(path, os.O_RDONLY)
    handle = _register(driver, fd)
    buf = ctypes.create_string_buffer(2 * MiB)
    check_status("cuFileBufRegister", driver.cuFileBufRegister(buf, len(buf), 0))
    try:
        ret = driver.cuFileRead(handle, buf, MiB, 3 * MiB + 5, MiB - 7)
        assert decode_io_result("cuFileRead", ret, ctypes.get_errno()) == MiB
        assert buf.raw[MiB - 7: 2 * MiB - 7] == data[3 * MiB + 5: 4 * MiB + 5]
    finally:
        check_status("cuFileBufDeregister", driver.cuFileBufDeregister(buf))
        driver.cuFileHandleDeregister(handle)
        os.close(fd)
    with pytest.raises(CuFileError) as info:
        check_status("cuFileBufDeregister", driver.cuFileBufDeregister(buf))
    assert info.value.name == "CU_FILE_MEMORY_NOT_REGISTERED"


@pytest.fixture()
def device_buffers() -> Iterator[list[int]]:
    """Eight 1 MiB device allocations through cuda-python (stand-in or real driver)."""
    from cuda.bindings import driver as cu

    def ok(result: tuple):
        assert result[0] == cu.CUresult.CUDA_SUCCESS, result[0]
        return result[1] if len(result) > 1 else None

    ok(cu.cuInit(0))
    device = ok(cu.cuDeviceGet(0))
    ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(device))))
    pointers = [ok(cu.cuMemAlloc(MiB)) for _ in range(8)]
    yield [int(p) for p in pointers]
    for p in pointers:
        ok(cu.cuMemFree(p))
    ok(cu.cuDevicePrimaryCtxRelease(device))


def _device_bytes(pointer: int, size: int) -> bytes:
    from cuda.bindings import driver as cu

    host = bytearray(size)
    assert cu.cuMemcpyDtoH(host, pointer, size)[0] == cu.CUresult.CUDA_SUCCESS
    return bytes(host)


def test_batch_of_eight_reads(driver: CuFileLib, data_file: tuple[Path, bytes], device_buffers: list[int]) -> None:
    # Device memory: with pageable or pinned host memory, libcufile 1.20 in compatibility mode fails
    # some batch entries now and then (CUFILE_FAILED, ret -1, "cufile_posix_read failed ... buf: 0").
    path, data = data_file
    fd = os.open(path, os.O_RDONLY)
    handle = _register(driver, fd)
    batch = abi.CUfileBatchHandle_t()
    check_status("cuFileBatchIOSetUp", driver.cuFileBatchIOSetUp(ctypes.byref(batch), 8))
    try:
        params = (abi.CUfileIOParams_t * 8)()
        for i, p in enumerate(params):
            p.mode = abi.CUFILE_BATCH
            p.fh = handle
            p.opcode = abi.CUFILE_READ
            p.cookie = i + 1
            p.u.batch.devPtr_base = device_buffers[i]
            p.u.batch.file_offset = (7 - i) * MiB
            p.u.batch.devPtr_offset = 0
            p.u.batch.size = MiB
        check_status("cuFileBatchIOSubmit", driver.cuFileBatchIOSubmit(batch, 8, params, 0))
        events = (abi.CUfileIOEvents_t * 8)()
        done: dict[int, int] = {}
        deadline = time.monotonic() + 60  # a loaded CI machine can take seconds; a wall-clock bound
        while time.monotonic() < deadline:
            nr = ctypes.c_uint(8)
            check_status("cuFileBatchIOGetStatus", driver.cuFileBatchIOGetStatus(
                batch, 0, ctypes.byref(nr), events, ctypes.byref(abi.timespec(0, 1_000_000))))
            for ev in events[: nr.value]:
                assert ev.status == abi.CUFILE_COMPLETE == 0x10
                done[ev.cookie] = decode_batch_event("cuFileBatchIO", ev.status, ev.ret, path=str(path))
            if len(done) == 8:
                break
        assert done == {i + 1: MiB for i in range(8)}
        for i, pointer in enumerate(device_buffers):
            assert _device_bytes(pointer, MiB) == data[(7 - i) * MiB: (8 - i) * MiB]
    finally:
        driver.cuFileBatchIODestroy(batch)
        driver.cuFileHandleDeregister(handle)
        os.close(fd)


def test_batch_rejects_a_request_without_batch_mode(driver: CuFileLib, data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    fd = os.open(path, os.O_RDONLY)
    handle = _register(driver, fd)
    batch = abi.CUfileBatchHandle_t()
    check_status("cuFileBatchIOSetUp", driver.cuFileBatchIOSetUp(ctypes.byref(batch), 1))
    try:
        buf = ctypes.create_string_buffer(4096)
        params = (abi.CUfileIOParams_t * 1)()
        params[0].fh = handle
        params[0].opcode = abi.CUFILE_READ
        params[0].u.batch.devPtr_base = ctypes.addressof(buf)
        params[0].u.batch.size = 4096  # mode left at 0 instead of CUFILE_BATCH
        with pytest.raises(CuFileError) as info:
            check_status("cuFileBatchIOSubmit", driver.cuFileBatchIOSubmit(batch, 1, params, 0))
        assert info.value.name == "CU_FILE_INTERNAL_BATCH_SUBMIT_ERROR"
    finally:
        driver.cuFileBatchIODestroy(batch)
        driver.cuFileHandleDeregister(handle)
        os.close(fd)


def test_readv_and_level1_statistics(lib: CuFileLib, data_file: tuple[Path, bytes]) -> None:
    if not lib.has("cuFileReadv"):
        pytest.skip(f"libcufile {lib.version_string} has no cuFileReadv (1.19+)")
    check_status("cuFileSetStatsLevel", lib.cuFileSetStatsLevel(1))
    check_status("cuFileDriverOpen", lib.cuFileDriverOpen())
    path, data = data_file
    fd = os.open(path, os.O_RDONLY)
    try:
        check_status("cuFileStatsReset", lib.cuFileStatsReset())
        handle = _register(lib, fd)
        bufs = [ctypes.create_string_buffer(n) for n in (100, 5000, 3)]
        iov = (abi.CUfileIOVec_t * 3)(*[abi.CUfileIOVec_t(ctypes.addressof(b), len(b)) for b in bufs])
        ret = lib.cuFileReadv(handle, iov, 3, 10, 0)
        assert decode_io_result("cuFileReadv", ret, ctypes.get_errno()) == 5103
        assert b"".join(b.raw for b in bufs) == data[10:5113]
        one = ctypes.create_string_buffer(4096)
        assert decode_io_result("cuFileRead", lib.cuFileRead(handle, one, 4096, 0, 0), ctypes.get_errno()) == 4096
        lib.cuFileHandleDeregister(handle)

        stats = abi.CUfileStatsLevel1_t()
        check_status("cuFileGetStatsL1", lib.cuFileGetStatsL1(ctypes.byref(stats)))
        assert (stats.read_ops.ok, stats.read_ops.err, stats.read_bytes) == (1, 0, 4096)
        assert (stats.readv_ops.ok, stats.readv_bytes) == (1, 5103)
        assert stats.hdl_register_ops.ok == 1 and stats.hdl_deregister_ops.ok == 1
    finally:
        os.close(fd)
        check_status("cuFileSetStatsLevel", lib.cuFileSetStatsLevel(0))
        check_status("cuFileDriverClose_v2", lib.cuFileDriverClose_v2())


def test_error_paths_decode_into_the_right_exception(driver: CuFileLib, data_file: tuple[Path, bytes],
                                                     tmp_path: Path) -> None:
    path, _ = data_file
    buf = ctypes.create_string_buffer(4096)

    fd = os.open(path, os.O_RDONLY)
    handle = _register(driver, fd)
    try:
        ret = driver.cuFileWrite(handle, buf, 4096, 0, 0)  # write through a read-only descriptor
        with pytest.raises(PygdsError) as info:
            decode_io_result("cuFileWrite", ret, ctypes.get_errno(), path=str(path))
        assert (ret, info.value.op, info.value.path) == (-1, "cuFileWrite", str(path))
        assert str(path) in str(info.value)
        if driver.version >= LIBCUFILE_1_16:
            assert type(info.value) is CuFileError and info.value.name == "CU_FILE_INVALID_FILE_OPEN_FLAG"
        else:
            assert type(info.value) is IOFailedError and info.value.errno == errno.EIO

        ret = driver.cuFileRead(handle, None, 4096, 0, 0)  # no buffer
        with pytest.raises(IOFailedError) as info:
            decode_io_result("cuFileRead", ret, ctypes.get_errno())
        assert info.value.errno == errno.EINVAL
    finally:
        driver.cuFileHandleDeregister(handle)
        os.close(fd)

    ret = driver.cuFileRead(handle, buf, 4096, 0, 0)  # the handle is deregistered now
    with pytest.raises(CuFileError) as info:
        decode_io_result("cuFileRead", ret, ctypes.get_errno())
    assert info.value.name == "CU_FILE_HANDLE_NOT_REGISTERED"
    if driver.version >= LIBCUFILE_1_16:
        assert driver.cuFileUseCount() == 1
    else:
        assert driver.cuFileUseCount() == 0
        check_status("cuFileDriverOpen", driver.cuFileDriverOpen())  # the reference the fixture closes

    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(CuFileError) as info:
            _register(driver, directory)
        assert info.value.name == "CU_FILE_INVALID_FILE_TYPE"
    finally:
        os.close(directory)
    with pytest.raises(CuFileError) as info:
        _register(driver, 987654)  # not an open descriptor
    assert info.value.name == "CU_FILE_INVALID_VALUE"
