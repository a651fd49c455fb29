"""A `File`'s lifetime against its transfers on the cuFile engine (real libcufile): `close()` and
garbage collection wait for futures, cuFile batches and stream-ordered I/O, so nothing is read
from, or written to, another file that reused the descriptor, and no cuFile handle is
deregistered under a transfer. Each file holds its own bytes, so a byte from the wrong one shows.
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

import pygds
from pygds import pool
from pygds.memory import DeviceBuffer

SIZE = 8 << 20


@pytest.fixture(autouse=True)
def _small_tasks():
    """4 KiB tasks: a request is thousands of pieces, still running when close() is called."""
    task = pool.task_size()
    pool.set_task_size(4096)
    yield
    pool.set_task_size(task)


def pattern(seed: int, n: int = SIZE) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def device_bytes(buf: DeviceBuffer, n: int, offset: int = 0) -> bytes:
    out = bytearray(n)
    pygds.memory.copy(out, buf.view.slice(offset, n), n)
    return bytes(out)


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(pattern(1))
    b.write_bytes(pattern(2))
    return a, b


def reuse_descriptors(path: Path, mode: str = "r", n: int = 4) -> list[pygds.File]:
    opened = [pygds.File(path, mode, engine="cufile") for _ in range(n)]
    assert all(f.engine == "cufile" for f in opened)
    return opened


def close_all(opened: list[pygds.File]) -> None:
    for f in opened:
        f.close()


def test_close_waits_for_a_read_future(files):
    a, b = files
    dst = DeviceBuffer(SIZE)
    f = pygds.File(a, engine="cufile")
    assert f.engine == "cufile"
    fut = f.pread(dst)
    f.close()
    others = reuse_descriptors(b)
    assert fut.result(timeout=120) == SIZE
    close_all(others)
    assert device_bytes(dst, SIZE) == a.read_bytes()


def test_close_waits_for_a_direct_write_future(files):
    a, b = files
    data = pattern(3)
    src = DeviceBuffer(SIZE)
    src.copy_from_host(bytearray(data))
    f = pygds.File(a, "r+", direct=True, engine="cufile")
    assert f.engine == "cufile"
    fut = f.pwrite(src)
    f.close()
    others = reuse_descriptors(b, "r+")
    assert fut.result(timeout=120) == SIZE
    close_all(others)
    assert a.read_bytes() == data and b.read_bytes() == pattern(2)


def test_a_future_keeps_its_file_open(files):
    a, b = files
    dst = DeviceBuffer(SIZE)
    fut = pygds.File(a, engine="cufile").pread(dst)
    gc.collect()
    others = reuse_descriptors(b)
    assert fut.result(timeout=120) == SIZE
    close_all(others)
    assert device_bytes(dst, SIZE) == a.read_bytes()


@pytest.mark.parametrize("memory", ["device", "host"])
def test_batch_then_close(files, memory):
    """Device memory goes through cuFile's batch API, host memory through the pool: closing the
    file right after submit finishes both before the descriptor goes."""
    a, b = files
    n, part = 8, SIZE // 8
    bufs = [DeviceBuffer(part) if memory == "device" else bytearray(part) for _ in range(n)]
    f = pygds.File(a, engine="cufile")
    batch = pygds.Batch(n)
    for i, buf in enumerate(bufs):
        batch.read(f, buf, part, i * part)
    assert batch.engine_batch == ("cufile" if memory == "device" else None)
    batch.submit()
    f.close()
    others = reuse_descriptors(b)
    results = batch.wait(timeout=120)
    batch.close()
    close_all(others)
    assert [r.status for r in results] == ["complete"] * n
    got = b"".join(device_bytes(x, part) if memory == "device" else bytes(x) for x in bufs)
    assert got == a.read_bytes()


def test_stream_io_then_close(files):
    """A stream-ordered read still in flight (cuFileReadAsync, then the threaded fallback that
    compatibility mode needs) is finished by close(), on the file it was started on."""
    pygds.reset_stream_io()  # take the cuFile async path first
    a, b = files
    dst = DeviceBuffer(SIZE)
    f = pygds.File(a, engine="cufile")
    io = f.read_async(dst, stream=0)
    assert io.native
    f.close()
    others = reuse_descriptors(b)
    assert io.wait() == SIZE
    close_all(others)
    assert device_bytes(dst, SIZE) == a.read_bytes()


def test_close_inside_a_pool_thread_finishes_the_queued_work(files):
    a, b = files
    threads = pool.num_threads()
    pool.set_num_threads(1)
    try:
        dst = DeviceBuffer(SIZE)
        f = pygds.File(a, engine="cufile")

        def job() -> int:
            fut = f.pread(dst)  # queued behind this very job on the only pool thread
            f.close()
            close_all(reuse_descriptors(b))
            return fut.result(timeout=60)

        assert pool.submit(job).result(timeout=120) == SIZE
    finally:
        pool.set_num_threads(threads)
    assert device_bytes(dst, SIZE) == a.read_bytes()


@pytest.mark.parametrize("engine", ["cufile", "posix"])
def test_reads_into_a_device_buffer_reuse_one_view_and_refuse_it_once_closed(tmp_path, engine):
    """`File.read(DeviceBuffer)` takes the buffer's one held view (no new view per call), lands
    every byte, keeps no reference that would hold the buffer alive, and refuses the buffer once
    it is closed instead of reading into freed memory."""
    path = tmp_path / "held.bin"
    data = pattern(11, 64 << 10)
    path.write_bytes(data)
    buf = DeviceBuffer(len(data))
    assert pygds.memory.held_view(buf) is pygds.memory.held_view(buf)
    with pygds.File(path, engine=engine) as f:
        for offset in range(0, len(data), 4096):
            assert f.read(buf, 4096, offset, buf_offset=offset) == 4096
        assert device_bytes(buf, len(data)) == data
        alive = weakref.ref(buf)
        del buf
        gc.collect()
        assert alive() is None
        closed = DeviceBuffer(4096)
        closed.close()
        with pytest.raises(pygds.InvalidArgumentError, match="closed"):
            f.read(closed, 4096, 0)
