"""pygds.File on the POSIX engine with host buffers: round trips, O_DIRECT, splitting, short reads, bad input."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import pygds
from pygds import pool


@pytest.fixture(autouse=True)
def _posix(monkeypatch):
    monkeypatch.setenv("PYGDS_ENGINE", "posix")


def rand(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed + n).integers(0, 256, n, dtype=np.uint8).tobytes()


SIZES = [0, 1, 7, 4095, 4096, 4097, 65536 + 3, (4 << 20) + 5, (9 << 20) + 4096]


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_any_size(tmp_path, size, direct):
    data = rand(size)
    path = tmp_path / "f.bin"
    with pygds.File(path, "w", direct=direct) as f:
        assert f.engine == "posix"
        assert f.write(bytearray(data)) == size
    assert path.read_bytes() == data
    out = bytearray(size)
    with pygds.File(path, "r", direct=direct) as f:
        assert f.read(out) == size
    assert bytes(out) == data


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
@pytest.mark.parametrize("file_offset,buf_offset,size", [
    (1, 3, 5000), (4095, 1, 4098), (12288, 0, 8192), (777, 4096, 3 * 4096 + 11), (5, 5, (4 << 20) + 9999)])
@pytest.mark.parametrize("as_view", [False, True], ids=["bytearray", "BufferView"])
def test_unaligned_offsets(tmp_path, direct, file_offset, buf_offset, size, as_view):
    path = tmp_path / "u.bin"
    base = rand(file_offset + size + 100, seed=1)
    path.write_bytes(base)
    src = bytearray(rand(buf_offset + size, seed=2))
    view = pygds.as_buffer if as_view else (lambda b: b)
    with pygds.File(path, "r+", direct=direct) as f:
        assert f.write(view(src), size, file_offset, buf_offset=buf_offset) == size
    expect = base[:file_offset] + bytes(src[buf_offset:buf_offset + size]) + base[file_offset + size:]
    assert path.read_bytes() == expect
    out = bytearray(buf_offset + size)
    with pygds.File(path, "r", direct=direct) as f:
        assert f.read(view(out), size, file_offset, buf_offset=buf_offset) == size
    assert out[buf_offset:] == src[buf_offset:buf_offset + size]
    assert out[:buf_offset] == bytearray(buf_offset)


def test_buffer_kinds(tmp_path):
    data = rand(10_000)
    path = tmp_path / "k.bin"
    path.write_bytes(data)
    with pygds.File(path) as f:
        t = torch.empty(10_000, dtype=torch.uint8)
        assert f.read(t) == 10_000 and t.numpy().tobytes() == data
        a = np.empty(2500, dtype=np.float32)
        assert f.read(a) == 10_000 and a.tobytes() == data
        mv = memoryview(bytearray(20_000))[5000:15000]
        assert f.read(mv) == 10_000 and bytes(mv) == data
        raw = bytearray(10_000)
        view = pygds.as_buffer(raw)
        assert f.read(pygds.Pointer(view.ptr, 10_000, kind="host")) == 10_000 and bytes(raw) == data
    with pygds.File(path, "w") as f:
        assert f.write(bytes(data)) == 10_000  # read-only bytes are fine to write from
    assert path.read_bytes() == data


# A BufferView with int arguments takes File.read's and File.write's fast path; anything else goes
# through the full argument handling: every behaviour is checked on both.
BUFFERS = {"bytearray": bytearray, "BufferView": lambda n: pygds.as_buffer(bytearray(n))}


@pytest.mark.parametrize("make", BUFFERS.values(), ids=BUFFERS.keys())
def test_short_read_at_end_of_file_is_reported(tmp_path, make):
    path = tmp_path / "short.bin"
    data = rand(1000)
    path.write_bytes(data)
    out = make(4096)
    raw = out.owner if isinstance(out, pygds.BufferView) else out
    with pygds.File(path) as f:
        assert f.read(out) == 1000 and bytes(raw[:1000]) == data
        assert f.read(out, 100, file_offset=950, buf_offset=2000) == 50 and bytes(raw[2000:2050]) == data[950:]
        assert f.read(out, 100, file_offset=5000) == 0
        assert f.read(out, 0, file_offset=10) == 0
        assert f.pread(out).result() == 1000


@pytest.mark.parametrize("make", BUFFERS.values(), ids=BUFFERS.keys())
def test_read_failure_names_the_cause(make):
    with pygds.File("/proc/self/mem") as f:  # unmapped addresses read as EIO
        with pytest.raises(pygds.IOFailedError, match="read of 4096 bytes at offset 8 of /proc/self/mem.*EIO.*dmesg"):
            f.read(make(4096), 4096, file_offset=8)


def test_large_request_is_split_over_threads(tmp_path, monkeypatch):
    size = 20 << 20
    data = rand(size)
    path = tmp_path / "big.bin"
    pool.set_task_size(1 << 20)
    try:
        with pygds.File(path, "w") as f:
            fut = f.pwrite(bytearray(data))
            assert fut.result() == size
        out = bytearray(size)
        with pygds.File(path) as f:
            futs = [f.pread(out, size // 2, 0), f.pread(out, size // 2, size // 2, buf_offset=size // 2)]
            assert sum(x.result() for x in futs) == size
    finally:
        pool.set_task_size(4 << 20)
    assert bytes(out) == data


@pytest.mark.parametrize("env,message", [
    ({"PYGDS_TASK_SIZE": "100"}, "PYGDS_TASK_SIZE='100' must be at least 4096"),
    ({"PYGDS_NTHREADS": "0"}, "PYGDS_NTHREADS='0' must be at least 1"),
    ({"PYGDS_NTHREADS": "four"}, "PYGDS_NTHREADS='four' is not an integer"),
])
def test_bad_pool_settings_fail_at_first_use_naming_the_variable(env, message, tmp_path):
    """The environment is read when the pool is first used, not at import: importing pygds (and
    opening a file) works, the first split request raises the clear error, and so does each after it."""
    script = textwrap.dedent(f"""\
        import pygds
        f = pygds.File({str(tmp_path / "p.bin")!r}, "w+")
        for _ in range(2):
            try:
                f.read(bytearray(64 << 20))
            except pygds.InvalidArgumentError as exc:
                print("RAISED", exc)
        """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("RAISED") == 2 and message in done.stdout, done.stdout


def test_marked_io_threads_run_requests_whole(tmp_path):
    """`mark_io_thread`: a thread of the caller's own I/O pool does each request in one piece."""
    path = tmp_path / "w.bin"
    path.write_bytes(rand(12 << 20))
    out = bytearray(12 << 20)
    assert not pool.inline(12 << 20)  # on an ordinary thread 12 MiB is split into 4 MiB tasks
    with ThreadPoolExecutor(2, initializer=pool.mark_io_thread) as io, pygds.File(path) as f:
        assert io.submit(pool.inline, 12 << 20).result()
        assert io.submit(f.read, out).result(timeout=60) == 12 << 20
    assert out == path.read_bytes()


def test_nested_requests_from_pool_threads_do_not_deadlock(tmp_path):
    path = tmp_path / "n.bin"
    path.write_bytes(rand(64 << 20))
    out = bytearray(64 << 20)
    with pygds.File(path) as f:
        futs = [pool.submit(f.read, memoryview(out)[i << 23:(i + 1) << 23], 8 << 20, i << 23)
                for i in range(8)]
        assert sum(x.result(timeout=60) for x in futs) == 64 << 20
    assert out == path.read_bytes()


# -- bad input ------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pygds.File(tmp_path / "nope" / "f.bin", "w")


def test_missing_file_read_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match="mode 'w' or 'x'"):
        pygds.File(tmp_path / "f.bin", "r")


def test_write_to_read_only_file(tmp_path):
    path = tmp_path / "ro.bin"
    path.write_bytes(b"x" * 10)
    with pygds.File(path, "r") as f:
        for buf in (b"abc", pygds.as_buffer(b"abc")):
            with pytest.raises(pygds.IOFailedError, match="read-only"):
                f.write(buf, 3)
    assert path.read_bytes() == b"x" * 10


_DROP_CAPS = """
import ctypes
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
libc = ctypes.CDLL(None, use_errno=True)
hdr, data = Header(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(hdr), data) == 0
data[0].effective = data[1].effective = 0
assert libc.capset(ctypes.byref(hdr), data) == 0
"""


def test_permission_denied(tmp_path):
    """Creating a file in a read-only directory fails clearly (root's override capabilities dropped first)."""
    import subprocess
    import sys
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    script = _DROP_CAPS + ("import pygds, sys\n"
                           "try:\n    pygds.File(sys.argv[1] + '/new.bin', 'w', engine='posix')\n"
                           "except PermissionError as e:\n    print('DENIED', e)\n")
    out = subprocess.run([sys.executable, "-c", script, str(locked)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.startswith("DENIED"), out.stdout + out.stderr
    assert "permission denied" in out.stdout and "new.bin" in out.stdout


@pytest.mark.parametrize("kwargs,match", [
    ({"file_offset": -1}, "file_offset"),
    ({"buf_offset": -5}, "buf_offset"),
    ({"size": -1}, "size"),
    ({"size": 200}, "holds 100 bytes"),
    ({"size": 50, "buf_offset": 60}, "holds 100 bytes"),
    ({"file_offset": (1 << 63) - 10, "size": 50}, "overflows"),
    ({"file_offset": 1.5}, "file_offset"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pygds.File(tmp_path / "a.bin", "w+") as f:
        for make in BUFFERS.values():
            with pytest.raises(pygds.InvalidArgumentError, match=match):
                f.write(make(100), **kwargs)
            with pytest.raises(pygds.InvalidArgumentError, match=match):
                f.read(make(100), **{"size": 1, **kwargs})
    assert (tmp_path / "a.bin").stat().st_size == 0


def test_read_into_read_only_buffer(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(b"abc")
    with pygds.File(path) as f:
        for buf in (b"xyz", pygds.as_buffer(b"xyz")):
            with pytest.raises(pygds.InvalidArgumentError, match="read-only"):
                f.read(buf)


def test_non_contiguous_tensor(tmp_path):
    t = torch.zeros(8, 8, dtype=torch.uint8).t()
    with pygds.File(tmp_path / "t.bin", "w") as f, pytest.raises(pygds.UnsupportedBufferError, match="contiguous"):
        f.write(t)


def test_unsupported_buffer(tmp_path):
    with pygds.File(tmp_path / "t.bin", "w") as f, pytest.raises(pygds.UnsupportedBufferError):
        f.write([1, 2, 3])


def test_closed_file(tmp_path):
    f = pygds.File(tmp_path / "c.bin", "w")
    f.close()
    f.close()
    with pytest.raises(pygds.FileClosedError, match="closed"):
        f.write(b"abc")
    with pytest.raises(pygds.FileClosedError):
        f.size()


def test_unknown_mode_and_engine(tmp_path):
    with pytest.raises(pygds.InvalidArgumentError, match="mode"):
        pygds.File(tmp_path / "m.bin", "rw")
    with pytest.raises(pygds.InvalidArgumentError, match="engine"):
        pygds.File(tmp_path / "m.bin", "w", engine="magic")


def test_disk_full_write_is_reported_not_hidden(tmp_path):
    """A write that hits the file-size limit raises with the cause; nothing claims success."""
    import subprocess
    import sys
    script = (
        "import resource, signal, pygds, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "f = pygds.File(sys.argv[1], 'w', engine='posix')\n"
        "try:\n    f.write(bytearray(4 << 20))\nexcept OSError as e:\n    print('ERR', e.errno, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "full.bin")], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.startswith("ERR 27"), out.stdout + out.stderr  # EFBIG
    assert "ulimit" in out.stdout and "full.bin" in out.stdout


def test_a_count_never_covers_a_hole_left_by_a_short_piece():
    """A split read whose middle piece came back short (the file shrank under it, then grew
    again for the later pieces) reports the bytes up to the hole, not the sum of the pieces."""
    def piece(start: int, n: int) -> int:
        return n // 2 if start == 4096 else n  # the second of four pieces is short

    request = pool.Request(piece, 4 * 4096, step=4096)
    assert request.run() == 4096 + 2048


def test_a_fifo_is_refused_at_open_without_blocking(tmp_path):
    """Opening a FIFO for reading waits for a writer; pygds refuses it at once, naming why."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result: list = []

    def attempt() -> None:
        try:
            pygds.File(fifo, "r", engine="posix")
        except pygds.InvalidArgumentError as exc:
            result.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert result and "FIFO" in result[0] and str(fifo) in result[0], result


@pytest.mark.parametrize("perm", ["644", 0o644 + 0.5, -1, 0o10000])
def test_perm_must_be_permission_bits(tmp_path, perm):
    with pytest.raises(pygds.InvalidArgumentError, match="perm must be an int of permission bits"):
        pygds.File(tmp_path / "f", "w", perm=perm)


def test_a_forked_child_gets_pool_threads_of_its_own(tmp_path):
    """A child forked after the parent used the pool has none of its threads: its futures still
    complete (run by threads the child starts), with the right bytes."""
    path = tmp_path / "fork.bin"
    path.write_bytes(rand(12 << 20, seed=5))
    script = textwrap.dedent("""
        import os, sys, pygds
        path = sys.argv[1]
        expected = open(path, "rb").read()
        with pygds.File(path) as f:
            assert f.read(bytearray(12 << 20)) == 12 << 20  # the parent's pool threads are running
            assert f.pread(bytearray(12 << 20)).result(timeout=30) == 12 << 20
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                with pygds.File(path) as f:
                    buf = bytearray(12 << 20)
                    code = 0 if f.pread(buf).result(timeout=15) == len(buf) and buf == expected else 1
            finally:
                os._exit(code)
        print("CHILD", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CHILD 0", done.stdout + done.stderr


def test_work_handed_to_the_pool_still_runs_at_exit(tmp_path):
    """A `pwrite` whose future nobody waits for is finished before the interpreter exits."""
    path = tmp_path / "exit.bin"
    data = rand(12 << 20, seed=6)
    script = textwrap.dedent("""
        import sys, pygds
        f = pygds.File(sys.argv[1], "w")
        f.pwrite(bytearray(open(sys.argv[2], "rb").read()))
    """)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", script, str(path), str(source)], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert path.read_bytes() == data


def test_the_exit_never_waits_on_threads_started_by_late_submits():
    """Daemon threads still submitting while the interpreter exits must not start pool threads
    that take the stop marks the exit gave the threads it waits for (it waited for ever)."""
    script = textwrap.dedent("""
        import threading, time
        from pygds import pool

        def spin():
            while True:
                for f in [pool.submit(time.sleep, 0.0005) for _ in range(4)]:
                    if not f.cancel():
                        f.result()

        for _ in range(2):
            threading.Thread(target=spin, daemon=True).start()
        time.sleep(0.3)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for _ in range(6):  # it hung in 4 of 6 runs before
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              check=False, env=env)
        assert done.returncode == 0, done.stderr


def test_resizing_the_pool_keeps_every_request_whole(tmp_path):
    """Shrinking and growing the pool between and during requests loses no piece."""
    path = tmp_path / "resize.bin"
    data = rand(24 << 20, seed=7)
    path.write_bytes(data)
    threads = pool.num_threads()
    try:
        with pygds.File(path) as f:
            for n in (4, 1, 3, 2, 6, 1):
                pool.set_num_threads(n)
                out = bytearray(len(data))
                futs = [f.pread(memoryview(out)[i << 22:(i + 1) << 22], 4 << 20, i << 22) for i in range(6)]
                assert f.read(out, 8 << 20, 0) == 8 << 20
                assert [x.result(timeout=60) for x in futs] == [4 << 20] * 6
                assert out == data
    finally:
        pool.set_num_threads(threads)


def test_the_direct_descriptor_is_the_file_first_opened_when_another_is_renamed_onto_the_name(tmp_path, monkeypatch):
    """A file renamed onto the name between the buffered open and the O_DIRECT one (another
    process publishing a new version) must not become the O_DIRECT descriptor: a read takes its
    unaligned ends from one descriptor and its aligned middle from the other."""
    first, second = os.urandom(3 * 4096 + 100), os.urandom(3 * 4096 + 100)
    path, newer = tmp_path / "entry", tmp_path / "entry.new"
    path.write_bytes(first)
    newer.write_bytes(second)
    real_open = os.open
    opened: list[str] = []

    def open_then_replace(name, flags, *args):
        fd = real_open(name, flags, *args)
        opened.append(os.fspath(name))
        if len(opened) == 1:
            os.rename(newer, path)  # lands between the two opens of the name
        return fd

    monkeypatch.setattr(os, "open", open_then_replace)
    try:
        f = pygds.File(path, "r", engine="posix", direct=True)
    except OSError as exc:
        if "O_DIRECT" in str(exc) and "does not support" in str(exc):
            pytest.skip(str(exc))
        raise
    monkeypatch.setattr(os, "open", real_open)
    with f:
        assert len(opened) == 2 and path.read_bytes() == second
        assert os.fstat(f.direct_fd).st_ino == os.fstat(f.fd).st_ino
        got = bytearray(len(first))
        assert f.read(got, len(got), 0) == len(first)
        assert bytes(got) == first


@pytest.mark.parametrize("op", ["read", "write"])
def test_a_buf_offset_past_the_buffer_without_a_size_is_named(tmp_path, op):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with pygds.File(path, "r+", engine="posix") as f:
        with pytest.raises(pygds.InvalidArgumentError, match="buf_offset 20 lies past the end of the 16-byte buffer"):
            getattr(f, op)(bytearray(16), None, 0, buf_offset=20)


def test_without_proc_a_file_renamed_onto_the_name_between_the_opens_is_refused(tmp_path, monkeypatch):
    """Where /proc is not mounted the O_DIRECT descriptor is opened by name: a different file
    found there is refused, naming the cause and the fix, and nothing stays open."""
    import pygds.file as file_module

    path, newer = tmp_path / "entry", tmp_path / "entry.new"
    path.write_bytes(os.urandom(3 * 4096))
    newer.write_bytes(os.urandom(3 * 4096))
    try:
        pygds.File(newer, "r", engine="posix", direct=True).close()
    except OSError as exc:
        pytest.skip(str(exc))  # no O_DIRECT on this file system
    real_open = os.open
    calls = []

    def open_then_replace(name, flags, *args):
        fd = real_open(name, flags, *args)
        calls.append(fd)
        if len(calls) == 1:
            os.rename(newer, path)
        return fd

    monkeypatch.setattr(file_module, "_PROC_FDS", False)
    monkeypatch.setattr(os, "open", open_then_replace)
    with pytest.raises(OSError, match="another file was renamed onto the name while it was being opened; "
                                      "open it again") as caught:
        pygds.File(path, "r", engine="posix", direct=True)
    monkeypatch.setattr(os, "open", real_open)
    assert caught.value.errno == errno.ESTALE and len(calls) == 2
    for fd in calls:
        with pytest.raises(OSError):
            os.fstat(fd)  # both descriptors were closed
