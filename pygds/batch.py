"""`Batch`: many reads and writes on many files, submitted together, waited on, cancellable.

When every operation is on a cuFile file into device memory the batch goes through cuFile's batch API
(`cuFileBatchIOSetUp`/`Submit`/`GetStatus`/`Cancel`/`Destroy`); otherwise the operations run on
pygds's thread pool. Either way each operation succeeds or fails on its own. A submitted batch
counts as a user of each of its files until its last operation has ended, so closing a file first
finishes the batch's operations on it (see `File.close`).
"""
from __future__ import annotations

import ctypes
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _cufile_abi as abi
from ._lib import cufile
from ._lifetime import Closeable
from .errors import (
    FileClosedError,
    InvalidArgumentError,
    PygdsError,
    check_status,
    decode_batch_event,
)
from .file import File

if TYPE_CHECKING:
    from .engines.cufile import CuFileHandle

_FINISHED = (abi.CUFILE_COMPLETE, abi.CUFILE_FAILED, abi.CUFILE_CANCELED, abi.CUFILE_TIMEOUT, abi.CUFILE_INVALID)


@dataclass
class BatchResult:
    """The outcome of one operation: its index in submission order, status, bytes moved or the error."""

    index: int
    status: str
    nbytes: int = 0
    error: BaseException | None = None


@dataclass
class _Op:
    file: File
    view: object
    size: int
    file_offset: int
    buf_offset: int
    write: bool


class Batch(Closeable):
    """Collect operations with `read`/`write`, then `submit()` and `wait()`; a context manager."""

    def __init__(self, max_ops: int = 128) -> None:
        if max_ops < 1:
            raise InvalidArgumentError(f"max_ops must be at least 1, got {max_ops}")
        self.max_ops = max_ops
        self._ops: list[_Op] = []
        self._results: dict[int, BatchResult] = {}
        self._futures: list[Future] = []
        self._handle = abi.CUfileBatchHandle_t()
        self._params: ctypes.Array | None = None
        self._submitted = False
        self._files: list[File] = []  # the files a cuFile batch holds open until it has ended
        self._lock = threading.RLock()  # `wait`, `cancel`, `close` and a closing file's drain

    def _add(self, file: File, buf: object, size: int | None, file_offset: int, buf_offset: int,
             write: bool) -> int:
        if self._submitted:
            raise InvalidArgumentError("this batch was already submitted; start a new Batch")
        if len(self._ops) >= self.max_ops:
            raise InvalidArgumentError(f"batch is full ({self.max_ops} operations); raise max_ops")
        _, view, size = file._prepare(buf, size, file_offset, buf_offset, writing=write)
        self._ops.append(_Op(file, view, size, file_offset, buf_offset, write))
        return len(self._ops) - 1

    def read(self, file: File, buf: object, size: int | None = None, file_offset: int = 0, *,
             buf_offset: int = 0) -> int:
        """Queue a read; returns its index."""
        return self._add(file, buf, size, file_offset, buf_offset, False)

    def write(self, file: File, buf: object, size: int | None = None, file_offset: int = 0, *,
              buf_offset: int = 0) -> int:
        """Queue a write; returns its index."""
        return self._add(file, buf, size, file_offset, buf_offset, True)

    @property
    def uses_cufile(self) -> bool:
        """cuFile's batch API only for device memory on cuFile files: in compatibility mode its
        batches into host memory fail intermittently, so those run on the thread pool instead."""
        return bool(self._ops) and all(not op.file.closed and op.file.engine == "cufile"
                                       and op.view.kind in ("device", "managed") for op in self._ops)

    def submit(self) -> None:
        """Start every queued operation."""
        if self._submitted:
            raise InvalidArgumentError("this batch was already submitted")
        self._submitted = True
        if self.uses_cufile:
            self._submit_cufile()
        else:
            for op in self._ops:
                self._futures.append(_pool_op(op))

    def _submit_cufile(self) -> None:
        with self._lock:
            handles: dict[int, CuFileHandle] = {}
            try:
                for op in self._ops:
                    if id(op.file) not in handles:
                        handles[id(op.file)] = op.file._acquire(self._drain)
                        self._files.append(op.file)
                self._submit_params(handles)
            except BaseException:
                self._release_files()
                raise

    def _submit_params(self, handles: dict[int, CuFileHandle]) -> None:
        lib = cufile()
        n = len(self._ops)
        check_status("cuFileBatchIOSetUp", lib.cuFileBatchIOSetUp(ctypes.byref(self._handle), n))
        params = (abi.CUfileIOParams_t * n)()
        for i, op in enumerate(self._ops):
            handle = handles[id(op.file)]
            base, offset = handle._base(op.view, op.size, op.buf_offset)
            p = params[i]
            p.mode = abi.CUFILE_BATCH
            p.u.batch.devPtr_base = base
            p.u.batch.file_offset = op.file_offset
            p.u.batch.devPtr_offset = offset
            p.u.batch.size = op.size
            p.fh = handle.handle
            p.opcode = abi.CUFILE_WRITE if op.write else abi.CUFILE_READ
            p.cookie = i
        self._params = params
        try:
            check_status("cuFileBatchIOSubmit", lib.cuFileBatchIOSubmit(self._handle, n, params, 0))
        except PygdsError:
            self._destroy()
            raise

    def wait(self, timeout: float | None = None) -> list[BatchResult]:
        """Wait for every operation; results in submission order. Unfinished ones at `timeout` say "timeout"."""
        if not self._submitted:
            self.submit()
        if self._params is not None:
            with self._lock:
                if self._handle:
                    self._wait_cufile(timeout)
        else:
            for i, fut in enumerate(self._futures):
                if i in self._results:
                    continue
                try:
                    self._results[i] = BatchResult(i, "complete", fut.result(timeout=timeout))
                except TimeoutError:
                    self._results[i] = BatchResult(i, "timeout")
                except Exception as exc:  # noqa: BLE001 - one failed op fails only itself
                    self._results[i] = BatchResult(i, "failed", 0, exc)
        return [self._results.get(i, BatchResult(i, "timeout")) for i in range(len(self._ops))]

    def _wait_cufile(self, timeout: float | None) -> None:
        lib = cufile()
        n = len(self._ops)
        events = (abi.CUfileIOEvents_t * n)()
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._results) < n:
            nr = ctypes.c_uint(n)
            wait = abi.timespec(0, 1_000_000)
            check_status("cuFileBatchIOGetStatus",
                         lib.cuFileBatchIOGetStatus(self._handle, 0, ctypes.byref(nr), events, ctypes.byref(wait)))
            for ev in events[: nr.value]:
                i = int(ev.cookie or 0)
                if ev.status not in _FINISHED:
                    continue
                op = self._ops[i]
                name = "cuFileBatchIO write" if op.write else "cuFileBatchIO read"
                try:
                    nbytes = decode_batch_event(name, ev.status, ev.ret, path=op.file.path)
                    self._results[i] = BatchResult(i, "complete", nbytes)
                except PygdsError as exc:
                    status = "canceled" if ev.status == abi.CUFILE_CANCELED else "failed"
                    self._results[i] = BatchResult(i, status, 0, exc)
            if deadline is not None and time.monotonic() > deadline:
                break
        if len(self._results) == n:
            self._destroy()

    def cancel(self) -> None:
        """Cancel what has not completed; `wait()` then reports those as "canceled"."""
        if self._params is not None:
            with self._lock:
                if not self._handle:
                    return
                # cuFileBatchIOCancel returns once no request is in flight (so the files may close)
                check_status("cuFileBatchIOCancel", cufile().cuFileBatchIOCancel(self._handle))
                self._wait_cufile(0)  # collect what completed before the cancel took effect
                for i in range(len(self._ops)):
                    self._results.setdefault(i, BatchResult(i, "canceled"))
                self._destroy()
        else:
            for i, fut in enumerate(self._futures):
                if fut.cancel():
                    self._results[i] = BatchResult(i, "canceled")

    def _destroy(self) -> None:
        if self._handle:
            cufile().cuFileBatchIODestroy(self._handle)
            self._handle = abi.CUfileBatchHandle_t()
        self._release_files()

    def _release_files(self) -> None:
        files, self._files = self._files, []
        for file in files:
            file._release(self._drain)

    def _drain(self) -> None:
        """See every operation of a submitted cuFile batch to its end, then release the batch and
        its files; run by `close()` and by a file's `close()`. The results stay for `wait()`."""
        with self._lock:
            if not self._handle:
                return
            try:
                self._wait_cufile(None)
            except PygdsError as exc:  # the status is lost: stop what runs; each unfinished operation fails with why
                cufile().cuFileBatchIOCancel(self._handle)
                for i in range(len(self._ops)):
                    self._results.setdefault(i, BatchResult(i, "failed", 0, exc))
            finally:
                self._destroy()

    def close(self) -> None:
        """Finish the operations submitted (their results stay for `wait()`), then release the
        cuFile batch."""
        self._drain()


def _pool_op(op: _Op) -> Future:
    """One operation on the pool; a file closed since it was queued fails only that operation."""
    fn = op.file.pwrite if op.write else op.file.pread
    try:
        return fn(op.view, op.size, op.file_offset, buf_offset=op.buf_offset)
    except FileClosedError as exc:
        failed: Future = Future()
        failed.set_exception(exc)
        return failed
