"""A `File`'s lifetime against its transfers (POSIX engine, real files): `close()` and garbage
collection wait for every transfer on the file, so no byte is ever read from, or written to,
another file that reused the descriptor number. Also modes, keyword-only `buf_offset`, and the
errors of opening a directory or writing past the largest file size.

Each file is filled with its own pattern, so a byte from the wrong file is caught wherever it lands.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pygds
from pygds import pool
from pygds.file import _os_failure

SIZE = 16 << 20
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _posix_small_tasks(monkeypatch):
    """POSIX engine, 4 KiB tasks (thousands of pieces per request), the default thread count."""
    monkeypatch.setenv("PYGDS_ENGINE", "posix")
    threads, task = pool.num_threads(), pool.task_size()
    pool.set_task_size(4096)
    yield
    pool.set_task_size(task)
    pool.set_num_threads(threads)


def pattern(seed: int, n: int = SIZE) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture
def files(tmp_path):
    """Two files, A and B, each with its own bytes."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(pattern(1))
    b.write_bytes(pattern(2))
    return a, b


def reuse_descriptors(path: Path, n: int = 4, mode: str = "r") -> list[pygds.File]:
    """Open `path` a few times: the new files take the descriptor numbers just freed."""
    return [pygds.File(path, mode) for _ in range(n)]


def close_all(opened: list[pygds.File]) -> None:
    for f in opened:
        f.close()


def test_close_waits_for_a_read_future(files):
    a, b = files
    buf = bytearray(SIZE)
    f = pygds.File(a)
    fd = f.fd
    fut = f.pread(buf)
    f.close()
    others = reuse_descriptors(b)
    assert fd in [o.fd for o in others]  # the number was reused: a late piece would read B
    assert fut.result(timeout=120) == SIZE
    close_all(others)
    assert buf == a.read_bytes()


def test_close_waits_for_a_direct_write_future(files):
    a, b = files
    data = pattern(3)
    f = pygds.File(a, "r+", direct=True)
    fut = f.pwrite(bytearray(data))
    f.close()
    others = reuse_descriptors(b, mode="r+")
    assert fut.result(timeout=120) == SIZE
    close_all(others)
    assert a.read_bytes() == data
    assert b.read_bytes() == pattern(2)


def test_a_future_keeps_its_file_open(files):
    """A `File` nobody holds any more stays open until its transfers end."""
    a, b = files
    buf = bytearray(SIZE)
    fut = pygds.File(a).pread(buf)
    gc.collect()
    others = reuse_descriptors(b)
    assert fut.result(timeout=120) == SIZE
    close_all(others)
    assert buf == a.read_bytes()


def test_close_waits_for_a_synchronous_read_on_another_thread(files):
    a, b = files
    buf = bytearray(SIZE)
    f = pygds.File(a)
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(f.read(buf)))
    reader.start()
    deadline = time.monotonic() + 60
    while not any(buf[:1 << 20]) and time.monotonic() < deadline:  # the read is under way
        time.sleep(0.001)
    f.close()
    others = reuse_descriptors(b)
    reader.join(120)
    close_all(others)
    assert outcome == [SIZE]
    assert buf == a.read_bytes()


def test_batch_on_the_pool_then_close(files):
    a, b = files
    bufs = [bytearray(2 << 20) for _ in range(8)]
    f = pygds.File(a)
    batch = pygds.Batch(8)
    for i, buf in enumerate(bufs):
        batch.read(f, buf, 2 << 20, i << 21)
    batch.submit()
    assert batch.engine_batch is None
    f.close()
    others = reuse_descriptors(b)
    results = batch.wait(timeout=120)
    close_all(others)
    assert [r.status for r in results] == ["complete"] * 8
    assert b"".join(bufs) == a.read_bytes()


def test_close_inside_a_pool_thread_finishes_the_queued_work(files):
    """With one pool thread busy running the caller's own job, close() there runs the queued
    pieces itself: it neither deadlocks nor closes under them."""
    a, b = files
    pool.set_num_threads(1)
    buf = bytearray(SIZE)
    f = pygds.File(a)

    def job() -> int:
        fut = f.pread(buf)  # its pieces queue behind this very job
        f.close()
        others = reuse_descriptors(b)
        close_all(others)
        return fut.result(timeout=60)

    assert pool.submit(job).result(timeout=120) == SIZE
    assert buf == a.read_bytes()


def test_close_from_a_done_callback(files):
    """A future's callback may close the file while the file's other requests are still queued."""
    a, b = files
    first, second = bytearray(4096), bytearray(SIZE)
    f = pygds.File(a)
    closed = threading.Event()
    fut2 = f.pread(second)
    fut1 = f.pread(first)
    fut1.add_done_callback(lambda _: (f.close(), closed.set()))
    assert closed.wait(120)
    others = reuse_descriptors(b)
    assert fut1.result(timeout=120) == 4096 and fut2.result(timeout=120) == SIZE
    close_all(others)
    assert second == a.read_bytes() and first == a.read_bytes()[:4096]


def test_no_transfer_starts_once_closed(files):
    a, _ = files
    f = pygds.File(a)
    f.close()
    buf = bytearray(4096)
    view = pygds.as_buffer(buf)
    for call in (lambda: f.read(view, 4096), lambda: f.read(buf), lambda: f.pread(buf),
                 lambda: f.read_async(buf), lambda: f.size(), lambda: f.fsync()):
        with pytest.raises(pygds.FileClosedError, match="closed"):
            call()
    other = bytearray(4096)
    with pygds.File(a) as open_file, pygds.Batch(2) as batch:  # a closed file fails only its operation
        closed_file = pygds.File(a)
        batch.read(closed_file, buf, 4096)
        batch.read(open_file, other, 4096)
        closed_file.close()
        failed, done = batch.wait(timeout=60)
    assert failed.status == "failed" and isinstance(failed.error, pygds.FileClosedError)
    assert done.status == "complete" and other == a.read_bytes()[:4096]


# -- modes ----------------------------------------------------------------------------------------

def access_mode(f: pygds.File) -> int:
    return fcntl.fcntl(f.fd, fcntl.F_GETFL) & os.O_ACCMODE


@pytest.mark.parametrize("mode,readable,writable,truncates", [
    ("r", True, False, False), ("r+", True, True, False),
    ("w", False, True, True), ("w+", True, True, True),
])
def test_modes_behave_as_open_documents_them(tmp_path, mode, readable, writable, truncates):
    path = tmp_path / "m.bin"
    path.write_bytes(b"0123456789")
    buf = bytearray(4)
    with pygds.File(path, mode) as f:
        assert path.stat().st_size == (0 if truncates else 10)
        assert access_mode(f) == {(True, False): os.O_RDONLY, (False, True): os.O_WRONLY,
                                  (True, True): os.O_RDWR}[readable, writable]
        for make in (lambda: buf, lambda: pygds.as_buffer(buf)):
            if writable:
                assert f.write(b"ab", 2, file_offset=12) == 2
            else:
                with pytest.raises(pygds.IOFailedError, match="read-only.*open it with") as info:
                    f.write(b"ab", 2)
                assert info.value.errno == errno.EBADF
            if readable:
                assert f.read(make(), 4) == 4
            else:
                with pytest.raises(pygds.IOFailedError, match=f"write-only \\(mode '{mode}'\\).*'{mode}\\+'") as info:
                    f.read(make(), 4)
                assert info.value.errno == errno.EBADF
    start = b"" if truncates else b"0123456789"
    assert path.read_bytes() == (start.ljust(12, b"\0") + b"ab" if writable else start)


def test_exclusive_modes(tmp_path):
    path = tmp_path / "x.bin"
    with pygds.File(path, "x") as f:
        assert access_mode(f) == os.O_WRONLY
        f.write(b"new", 3)
        with pytest.raises(pygds.IOFailedError, match="write-only"):
            f.read(bytearray(3))
    with pytest.raises(FileExistsError):
        pygds.File(path, "x")
    path.unlink()
    with pygds.File(path, "x+") as f:
        assert f.write(b"abc", 3) == 3
        out = bytearray(3)
        assert f.read(out) == 3 and out == b"abc"


@pytest.mark.parametrize("mode", ["a", "a+"])
def test_append_is_refused_with_the_way_to_do_it(tmp_path, mode):
    path = tmp_path / "a.bin"
    path.write_bytes(b"keep")
    with pytest.raises(pygds.InvalidArgumentError, match="append.*'r\\+'.*f.size\\(\\)"):
        pygds.File(path, mode)
    assert path.read_bytes() == b"keep"


def test_buf_offset_is_keyword_only(tmp_path):
    """KvikIO's `read(buf, size, file_offset, task_size)`, ported as is, must not take the task
    size for a buffer offset."""
    path = tmp_path / "k.bin"
    path.write_bytes(pattern(4, 8192))
    buf = bytearray(8192)
    with pygds.File(path, "r+") as f, pygds.Batch(2) as batch:
        for call in (f.read, f.write, f.pread, f.pwrite, f.read_async, f.write_async):
            with pytest.raises(TypeError, match="positional"):
                call(buf, 16, 0, 4096)
        for call in (batch.read, batch.write):
            with pytest.raises(TypeError, match="positional"):
                call(f, buf, 16, 0, 4096)
        assert f.read(buf, 16, 0, buf_offset=4096) == 16
    assert buf[4096:4112] == pattern(4, 8192)[:16] and not any(buf[:4096])


# -- errors that name the cause ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["r", "r+", "w"])
def test_a_directory_is_refused_at_open(tmp_path, mode):
    expect = f"cannot open {tmp_path} (mode {mode!r}): it is a directory; pass the path of a file"
    with pytest.raises(IsADirectoryError, match=re.escape(expect)) as info:
        pygds.File(tmp_path, mode)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path)


def test_an_error_without_advice_points_at_nothing_absent():
    message = str(_os_failure(OSError(errno.ENOLINK, "x"), "read", "/f", 0, 10, 0))
    assert message.endswith(f"{os.strerror(errno.ENOLINK)} (ENOLINK)")
    assert "above" not in message


_FAR_WRITE = """
import resource, sys, pygds
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
print("UNLIMITED" if hard == resource.RLIM_INFINITY else "LIMITED")
with pygds.File(sys.argv[1], "w", engine="posix") as f:
    try:
        f.write(b"x", 1, file_offset=1 << 62)
        print("WROTE")
    except OSError as e:
        print("ERR", e.errno, e)
"""


def test_write_past_the_largest_file_names_the_file_system_limit(tmp_path):
    done = subprocess.run([sys.executable, "-c", _FAR_WRITE, str(tmp_path / "far.bin")], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    out = done.stdout
    if "WROTE" in out:
        pytest.skip("this file system allows files past 2**62 bytes")
    if out.startswith("LIMITED"):
        pytest.skip("the hard RLIMIT_FSIZE here is finite: ulimit is a true cause")
    assert f"ERR {errno.EFBIG}" in out, out + done.stderr
    assert "largest file size the file system allows" in out and str((1 << 62) + 1) in out
    assert "ulimit" not in out


def _slow_pieces(monkeypatch, method: str, on_pool: float, on_caller: float) -> None:
    """Delay every piece moved on a pool thread, and on the calling thread (as a loaded machine
    does): only the timing changes."""
    from pygds.engines import posix

    real = getattr(posix.PosixHandle, method)

    def slow(self, *args):
        time.sleep(on_pool if pool.on_pool_thread() else on_caller)
        return real(self, *args)

    monkeypatch.setattr(posix.PosixHandle, method, slow)


def test_an_interrupted_synchronous_write_ends_its_pieces_before_it_raises(files, monkeypatch):
    """Ctrl-C while a split write waits for its helpers: the write raises only once no piece of
    it runs, so closing the file and reusing its descriptor cannot take another file's bytes."""
    import signal

    a, b = files
    pool.set_num_threads(2)
    pool.set_task_size(SIZE // 2)  # two pieces: the caller's and one helper's
    _slow_pieces(monkeypatch, "write", on_pool=0.3, on_caller=0.03)  # the helper has time to take its piece

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    f = pygds.File(a, "r+", direct=True)  # a host write to an O_DIRECT file is split over the pool
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            f.write(bytearray(b"W" * SIZE))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    f.close()
    opened = reuse_descriptors(b, mode="r+")
    time.sleep(0.5)  # a helper piece still pending would land in one of these now
    close_all(opened)
    assert b.read_bytes() == pattern(2)
    assert a.read_bytes() == b"W" * SIZE  # both pieces ran (neither had been left untaken)


def test_a_future_submitted_while_the_file_closes_resolves(files, monkeypatch):
    """`close()` may drain a `pread` between its registration and its start: its future still
    resolves, with the count."""
    a, _ = files
    real_start = pool.Request.start

    def late_start(self):
        time.sleep(0.2)  # close() runs in this window
        return real_start(self)

    monkeypatch.setattr(pool.Request, "start", late_start)
    f = pygds.File(a)
    buf = bytearray(64 << 10)
    out = {}
    submitter = threading.Thread(target=lambda: out.setdefault("future", f.pread(buf)))
    submitter.start()
    time.sleep(0.05)
    f.close()
    submitter.join()
    assert out["future"].result(timeout=10) == len(buf)
    assert bytes(buf) == pattern(1)[: len(buf)]


def test_a_batch_wait_timeout_bounds_the_whole_wait_and_a_later_wait_sees_the_ends(files, monkeypatch):
    a, _ = files
    pool.set_task_size(1 << 20)
    _slow_pieces(monkeypatch, "read", on_pool=0.4, on_caller=0.0)
    bufs = [bytearray(1 << 20) for _ in range(8)]
    with pygds.File(a) as f, pygds.Batch(8) as batch:
        for i, buf in enumerate(bufs):
            batch.read(f, buf, 1 << 20, i << 20)
        began = time.monotonic()
        first = batch.wait(timeout=0.1)
        waited = time.monotonic() - began
        later = batch.wait(timeout=60)
    assert "timeout" in [r.status for r in first]
    assert waited < 0.1 * len(bufs)  # one timeout for the batch, not one per operation
    assert [(r.status, r.nbytes) for r in later] == [("complete", 1 << 20)] * 8
    assert b"".join(bufs) == a.read_bytes()[: 8 << 20]
