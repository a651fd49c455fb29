"""benchmarks/bench_kvikio.py's byte check: a run that moves the wrong bytes, or none, never yields
a figure. (Its whole run, on the stand-in, is covered by tests/test_gpu_check.py's dry run.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.bench_kvikio import WrongBytes, check, host_memory, pread, requests

SIZE = 4096


@pytest.fixture
def setup(tmp_path: Path):
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(4 * SIZE))
    return str(path), host_memory(2 * SIZE), requests(SIZE, 4 * SIZE, 3)


def test_requests_walk_through_the_file_within_both_bounds() -> None:
    assert requests(SIZE, 4 * SIZE, 6) == [0, SIZE, 2 * SIZE, 3 * SIZE]  # the file's end
    assert requests(SIZE, 4 * SIZE, 2) == [0, SIZE]  # the most requests per run
    assert requests(4 * SIZE, 4 * SIZE, 6) == [0]


def test_a_read_that_moves_nothing_or_the_wrong_bytes_is_refused(setup) -> None:
    path, mem, offsets = setup
    with pytest.raises(WrongBytes, match="idle: read of 4 KiB requests into host memory"):
        check("idle", "read", mem, SIZE, offsets, lambda: None, path)
    with pytest.raises(WrongBytes, match=f"offset {offsets[-1]}"):
        check("stuck", "read", mem, SIZE, offsets, lambda: mem.put(pread(path, SIZE, offsets[0])), path)

    def read_all() -> None:
        for offset in offsets:
            mem.put(pread(path, SIZE, offset))

    check("posix", "read", mem, SIZE, offsets, read_all, path)


def test_a_write_that_moves_nothing_or_misses_a_request_is_refused(setup) -> None:
    path, mem, offsets = setup

    def write(chosen: list[int]):
        def run() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                for offset in chosen:
                    os.pwrite(fd, mem.get(SIZE), offset)
            finally:
                os.close(fd)
        return run

    with pytest.raises(WrongBytes, match="idle: write .* does not hold the buffer's bytes"):
        check("idle", "write", mem, SIZE, offsets, lambda: None, path)
    with pytest.raises(WrongBytes, match=f"offset {offsets[-1]}"):
        check("first only", "write", mem, SIZE, offsets, write(offsets[:1]), path)
    check("posix", "write", mem, SIZE, offsets, write(offsets), path)
