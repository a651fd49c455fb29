"""pygds's high layer on the real libcufile (stand-in CUDA driver on CI, a real GPU elsewhere).

Every test here must prove cuFile moved the bytes: files ask for engine "cufile" (or, for `auto`,
GDS mode is presented by the sandbox shim) and device memory is stand-in (or real) CUDA memory that
POSIX could only reach through explicit copies.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import pygds
from pygds.memory import DeviceBuffer, Pointer

STANDIN = "PYGDS_STANDIN_DEVICES" in os.environ
"""Under the CUDA driver stand-in cuFile's stream-ordered I/O fails: libcufile's async path launches a
copy kernel of its own (cuFileGpuCopy), which the stand-in cannot run, and the call reports -EIO.
On a real driver the same path works, in compatibility mode too (libcufile 1.15, an H200)."""


def rand(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed * 7919 + n).integers(0, 256, n, dtype=np.uint8).tobytes()


def device_with(data: bytes) -> DeviceBuffer:
    buf = DeviceBuffer(max(len(data), 1))
    if data:
        buf.copy_from_host(bytearray(data))
    return buf


def device_bytes(buf: DeviceBuffer, n: int, offset: int = 0) -> bytes:
    out = bytearray(n)
    if n:
        pygds.memory.copy(out, buf.view.slice(offset, n), n)
    return bytes(out)


def test_auto_picks_cufile_in_gds_mode(tmp_path, gds_mode):
    assert pygds.choose_engine("auto").name == "cufile"
    with pygds.File(tmp_path / "a.bin", "w") as f:
        assert f.engine == "cufile" and "GDS mode" in f.engine_reason


def test_auto_picks_posix_in_compatibility_mode(tmp_path, compat_mode):
    """Without nvidia-fs libcufile would do POSIX I/O through its own bounce buffers: `auto` takes
    pygds's POSIX engine, which moves device memory through pinned buffers of its own."""
    choice = pygds.choose_engine("auto")
    assert choice.name == "posix" and "compatibility mode" in choice.reason and not choice.fallback
    data = rand((9 << 20) + 5)
    path = tmp_path / "a.bin"
    with pygds.File(path, "w") as f:
        assert f.engine == "posix" and f.engine_reason == choice.reason
        assert f.write(device_with(data)) == len(data)
    assert path.read_bytes() == data
    dst = DeviceBuffer(len(data))
    with pygds.File(path) as f:
        assert f.read(dst) == len(data)
        assert f.read(dst, 4096, 8192, buf_offset=3) == 4096
    assert device_bytes(dst, 3) == data[:3] and device_bytes(dst, 4096, 3) == data[8192:12288]
    assert device_bytes(dst, len(data) - 4099, 4099) == data[4099:]


def test_driver_is_reference_counted():
    a = pygds.Driver()
    b = pygds.Driver()
    props = b.properties
    a.close()
    assert b.properties == props
    assert props.max_batch_io_size > 0
    assert isinstance(props.as_dict()["feature_flags"], list)
    b.close()
    b.close()
    with pygds.Driver() as c:
        assert c.properties.max_batch_io_size == props.max_batch_io_size


def test_parameters_read_and_range():
    with pygds.Driver() as d:
        params = d.parameters()
        assert isinstance(params["CUFILE_PARAM_PROPERTIES_MAX_DIRECT_IO_SIZE_KB"], int)
        assert isinstance(params["CUFILE_PARAM_PROPERTIES_ALLOW_COMPAT_MODE"], bool)
        assert d.get_parameter("PROPERTIES_ALLOW_COMPAT_MODE") is True
        lo, hi = d.parameter_range("PROPERTIES_MAX_DIRECT_IO_SIZE_KB")
        assert lo <= params["CUFILE_PARAM_PROPERTIES_MAX_DIRECT_IO_SIZE_KB"] <= hi
        with pytest.raises(pygds.InvalidArgumentError, match="unknown cuFile parameter"):
            d.get_parameter("NO_SUCH_THING")


@pytest.mark.parametrize("size,file_offset,buf_offset", [
    (1, 0, 0), (4096, 0, 0), (4097, 3, 5), (65536, 4096, 0), (1 << 20, 12345, 777), ((5 << 20) + 3, 1, 4096)])
def test_device_round_trip(tmp_path, size, file_offset, buf_offset):
    data = rand(size)
    path = tmp_path / "d.bin"
    src = device_with(bytes(buf_offset) + data)
    with pygds.File(path, "w", engine="cufile") as f:
        assert f.engine == "cufile"
        assert f.write(src, size, file_offset, buf_offset=buf_offset) == size
    assert path.read_bytes()[file_offset:] == data
    dst = DeviceBuffer(size + buf_offset)
    with pygds.File(path, "r", engine="cufile") as f:
        assert f.read(dst, size, file_offset, buf_offset=buf_offset) == size
    assert device_bytes(dst, size, buf_offset) == data


def test_registered_buffer_zero_copy_views(tmp_path):
    data = rand(3 << 20)
    path = tmp_path / "r.bin"
    path.write_bytes(data)
    dev = DeviceBuffer(8 << 20)
    with pygds.Driver() as drv, drv.register(dev) as reg, pygds.File(path, engine="cufile") as f:
        assert reg.nbytes == 8 << 20
        # a view in the middle of the registered range goes to cuFile as (base, offset)
        inner = Pointer(dev.ptr + (1 << 20), 3 << 20, kind="device")
        assert f.read(inner) == 3 << 20
        # small reads into a BufferView (File.read's fast path), inside the registration
        view = dev.view
        assert f.read(view, 4096, file_offset=8192, buf_offset=(5 << 20) + 3) == 4096
        assert device_bytes(dev, 4096, (5 << 20) + 3) == data[8192:12288]
    assert device_bytes(dev, 3 << 20, 1 << 20) == data
    with pygds.File(path, engine="cufile") as f:  # deregistered: the same read goes to cuFile as plain device memory
        assert f.read(view, 4096, file_offset=0, buf_offset=(6 << 20) + 1) == 4096
    assert device_bytes(dev, 4096, (6 << 20) + 1) == data[:4096]


def test_pageable_host_memory_through_cufile(tmp_path):
    data = rand(100_003)
    path = tmp_path / "h.bin"
    with pygds.File(path, "w", engine="cufile") as f:
        assert f.engine == "cufile"
        f.write(bytearray(data), file_offset=11)
    out = bytearray(100_010)
    with pygds.File(path, engine="cufile") as f:
        assert f.read(out, 100_003, 11, buf_offset=7) == 100_003
    assert bytes(out[7:]) == data


def test_short_read_at_end_of_file(tmp_path):
    path = tmp_path / "s.bin"
    path.write_bytes(rand(10_000))
    dev = DeviceBuffer(1 << 20)
    with pygds.File(path, engine="cufile") as f:
        assert f.read(dev, 1 << 20) == 10_000
        assert f.read(dev, 4096, file_offset=20_000) == 0


def test_large_device_request_split_over_threads(tmp_path):
    size = 24 << 20
    data = rand(size)
    src = device_with(data)
    path = tmp_path / "big.bin"
    with pygds.File(path, "w", engine="cufile") as f:
        assert f.pwrite(src).result() == size
    dst = DeviceBuffer(size)
    with pygds.File(path, engine="cufile") as f:
        assert f.pread(dst).result() == size
    assert device_bytes(dst, size) == data


def test_batch_reads_and_writes(tmp_path):
    chunks = [rand(1 << 20, seed=i) for i in range(8)]
    path = tmp_path / "b.bin"
    srcs = [device_with(c) for c in chunks]
    with pygds.File(path, "w", engine="cufile") as f, pygds.Batch(16) as batch:
        for i, s in enumerate(srcs):
            batch.write(f, s, 1 << 20, i << 20)
        assert batch.engine_batch == "cufile"
        results = batch.wait(timeout=30)
    assert [r.status for r in results] == ["complete"] * 8
    assert [r.nbytes for r in results] == [1 << 20] * 8
    assert path.read_bytes() == b"".join(chunks)
    dsts = [DeviceBuffer(1 << 20) for _ in range(8)]
    with pygds.File(path, engine="cufile") as f, pygds.Batch(8) as batch:
        for i, d in enumerate(dsts):
            batch.read(f, d, 1 << 20, (7 - i) << 20)
        results = batch.wait(timeout=30)
    assert all(r.status == "complete" and r.nbytes == 1 << 20 for r in results)
    assert [device_bytes(d, 1 << 20) for d in dsts] == chunks[::-1]


def test_batch_error_fails_only_that_entry(tmp_path):
    path = tmp_path / "g.bin"
    path.write_bytes(rand(1 << 16))
    dev = DeviceBuffer(1 << 16)
    # the second target runs past the end of its device allocation: cuFile rejects that one request
    past_end = Pointer(dev.ptr + (1 << 16) - 100, 4096, kind="device")
    with pygds.File(path, engine="cufile") as f, pygds.Batch(4) as batch:
        batch.read(f, dev, 1 << 16, 0)
        batch.read(f, past_end, 4096, 0)
        results = batch.wait(timeout=30)
    assert results[0].status == "complete" and results[0].nbytes == 1 << 16
    assert device_bytes(dev, 1 << 16) == path.read_bytes()
    assert results[1].status == "failed"
    assert isinstance(results[1].error, pygds.PygdsError) and "g.bin" in str(results[1].error)


def test_batch_cancel(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(rand(8 << 20))
    dsts = [DeviceBuffer(1 << 20) for _ in range(8)]
    with pygds.File(path, engine="cufile") as f, pygds.Batch(8) as batch:
        for i, d in enumerate(dsts):
            batch.read(f, d, 1 << 20, i << 20)
        batch.submit()
        batch.cancel()
        results = batch.wait(timeout=30)
    assert len(results) == 8
    assert all(r.status in ("complete", "canceled") for r in results)


def test_async_falls_back_on_eio(tmp_path, caplog):
    """Stream-ordered I/O moves the bytes either way. Where cuFile's stream path works, both transfers
    stay native; where it fails (the stand-in), the first comes back -EIO, is redone on the threaded
    path and logged once, and the second goes to the threaded path at once."""
    data = rand(2 << 20)
    path = tmp_path / "async.bin"
    path.write_bytes(data)
    dev = DeviceBuffer(2 << 20)
    with caplog.at_level(logging.WARNING, logger="pygds.engines.cufile.stream"), pygds.File(path, "r+", engine="cufile") as f:
        first = f.read_async(dev, stream=0)
        assert first.wait() == 2 << 20
        assert device_bytes(dev, 2 << 20) == data
        second = f.write_async(dev, 1 << 20, 1 << 20, stream=0)
        assert second.wait() == 1 << 20
    assert path.read_bytes() == data[:1 << 20] * 2
    assert first.native
    assert second.native is not STANDIN
    assert sum("-EIO" in r.getMessage() for r in caplog.records) == (1 if STANDIN else 0)


def test_stream_io_turns_native_again_on_reset_and_on_driver_reopen(tmp_path):
    """cuFile's -EIO (the stand-in's) turns its stream path off for the process; `pygds.reset_stream_io()`
    and a fresh open of the cuFile driver each turn it back on. Where the path works it stays on
    throughout, and every read lands either way."""
    data = rand(1 << 20)
    path = tmp_path / "again.bin"
    path.write_bytes(data)
    dev = DeviceBuffer(1 << 20)

    def read(f: pygds.File) -> bool:
        dev.copy_from_host(bytearray(1 << 20))
        io = f.read_async(dev, stream=0)
        assert io.wait() == 1 << 20 and device_bytes(dev, 1 << 20) == data
        return io.native

    with pygds.File(path, engine="cufile") as f:
        read(f)  # the -EIO that turns it off, where it fails and is not off yet
        assert read(f) is not STANDIN
        pygds.reset_stream_io()
        assert read(f)
        assert read(f) is not STANDIN
    pygds.close_shared()  # the last reference: the driver closes, and opens again for the next file
    with pygds.File(path, engine="cufile") as f:
        assert read(f)


def test_driver_front_door_names_its_engine_and_registers(tmp_path):
    dev = DeviceBuffer(1 << 20)
    with pygds.Driver("auto") as auto, pygds.Driver("cufile") as named, pygds.RegisteredBuffer(dev) as reg:
        assert (auto.engine, named.engine, reg.engine) == ("cufile", "cufile", "cufile")
        assert named.use_count() == 1  # libcufile's own count: the driver is open once
        with pytest.raises(pygds.InvalidArgumentError, match="differs from the engine of the driver"):
            pygds.RegisteredBuffer(dev, driver=named, engine="hipfile")
    with pytest.raises(pygds.DriverUnavailableError, match="POSIX engine"):
        pygds.Driver("posix")


def test_auto_falls_back_when_handle_registration_fails(tmp_path, caplog, gds_mode):
    pygds.reset_fallback_log()
    with caplog.at_level(logging.WARNING, logger="pygds.engines.registry"):
        with pygds.File("/dev/null", "r+") as f:
            assert f.engine == "posix"
        with pygds.File("/dev/null", "r+") as f:
            assert f.engine == "posix"
    msgs = [r.getMessage() for r in caplog.records if "cuFileHandleRegister" in r.getMessage()]
    assert len(msgs) == 1
    with pytest.raises(pygds.CuFileError, match="cuFileHandleRegister"):
        pygds.File("/dev/null", "r+", engine="cufile")


def test_posix_engine_with_device_buffers(tmp_path):
    data = rand((9 << 20) + 5)
    src = device_with(data)
    path = tmp_path / "p.bin"
    with pygds.File(path, "w", engine="posix") as f:
        assert f.engine == "posix"
        assert f.write(src) == len(data)
    assert path.read_bytes() == data
    dst = DeviceBuffer(len(data))
    with pygds.File(path, engine="posix", direct=True) as f:
        assert f.read(dst) == len(data)
    assert device_bytes(dst, len(data)) == data


def test_posix_device_reads_alternate_the_stage_halves(tmp_path):
    """A request larger than half a bounce stage, run whole (an I/O thread's), is read piece by piece
    into the stage's halves, each copied on its own stream while the next is read: every byte lands,
    at odd offsets, and a read past the end of the file stops short with the right count."""
    data = rand((19 << 20) + 7)
    path = tmp_path / "pipe.bin"
    path.write_bytes(data)
    dst = DeviceBuffer(len(data) + 5)

    def whole_reads() -> tuple[int, int]:
        pygds.pool.mark_io_thread()
        with pygds.File(path, engine="posix") as f:
            return f.read(dst, len(data) - 3, 3, buf_offset=5), f.read(dst, 12 << 20, len(data) - (9 << 20))

    with ThreadPoolExecutor(1) as pool:
        first, second = pool.submit(whole_reads).result(timeout=120)
    assert first == len(data) - 3 and second == 9 << 20
    assert device_bytes(dst, 9 << 20) == data[-(9 << 20):]
    assert device_bytes(dst, len(data) - 3 - (9 << 20) + 5, 9 << 20) == data[3 + (9 << 20) - 5:]
