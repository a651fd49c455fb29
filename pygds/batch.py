"""`Batch`: many reads and writes on many files, submitted together, waited on, cancellable.

When every operation is on files of one engine whose own batch API takes it (cuFile's, for device
memory), the batch goes through that API; otherwise the operations run on pygds's thread pool.
Either way each operation succeeds or fails on its own. A submitted batch holds each of its files
(a lease) until its last operation has ended, so closing a file first finishes the batch's
operations on it (see `File.close`).
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from ._lifetime import Closeable
from .engines import registry
from .engines.base import BatchOp, BatchResult, Engine, EngineBatch
from .errors import FileClosedError, InvalidArgumentError, PygdsError
from .file import File, Lease
from .memory import BufferView

__all__ = ["Batch", "BatchResult"]


@dataclass
class _Op:
    file: File
    view: BufferView
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
        self._native: EngineBatch | None = None  # the engine's batch, until it has ended
        self._native_engine_name: str | None = None  # the engine whose batch API took the submitted batch
        self._submitted = False
        self._leases: list[Lease] = []  # the files an engine's batch holds open until it has ended
        self._lock = threading.RLock()  # `wait`, `cancel`, `close` and a closing file's drain

    def _add(self, file: File, buf: object, size: int | None, file_offset: int, buf_offset: int,
             write: bool) -> int:
        if self._submitted:
            raise InvalidArgumentError("this batch was already submitted; start a new Batch")
        if len(self._ops) >= self.max_ops:
            raise InvalidArgumentError(f"batch is full ({self.max_ops} operations); raise max_ops")
        view, size = file.check_request(buf, size, file_offset, buf_offset=buf_offset, writing=write)
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

    def _native_engine(self) -> Engine | None:
        """The engine whose own batch API takes every operation queued, or None."""
        if not self._ops or any(op.file.closed for op in self._ops):
            return None
        names = {op.file.engine for op in self._ops}
        if len(names) != 1:
            return None
        engine = registry.get(names.pop())
        return engine if all(engine.batch_accepts(op.view) for op in self._ops) else None

    @property
    def engine_batch(self) -> str | None:
        """The engine whose own batch API runs (or would run) these operations, e.g. "cufile"; None
        when pygds's thread pool does. cuFile's takes device memory only: in compatibility mode its
        batches into host memory fail intermittently."""
        if self._submitted:
            return self._native_engine_name
        engine = self._native_engine()
        return engine.name if engine is not None else None

    def submit(self) -> None:
        """Start every queued operation."""
        if self._submitted:
            raise InvalidArgumentError("this batch was already submitted")
        self._submitted = True
        engine = self._native_engine()
        if engine is not None:
            self._submit_native(engine)
        else:
            for op in self._ops:
                self._futures.append(_pool_op(op))

    def _submit_native(self, engine: Engine) -> None:
        with self._lock:
            leases: dict[int, Lease] = {}
            try:
                for op in self._ops:
                    if id(op.file) not in leases:
                        leases[id(op.file)] = op.file.lease(self._drain)
                        self._leases.append(leases[id(op.file)])
                self._native = engine.submit_batch([
                    BatchOp(leases[id(op.file)].handle, op.view, op.size, op.file_offset, op.buf_offset, op.write,
                            op.file.path) for op in self._ops])
                self._native_engine_name = engine.name
            except BaseException:
                self._release_files()
                raise

    def wait(self, timeout: float | None = None) -> list[BatchResult]:
        """Wait for every operation; results in submission order. Unfinished ones at `timeout` say "timeout"."""
        if not self._submitted:
            self.submit()
        if self._native_engine_name is not None:
            with self._lock:
                if self._native is not None:
                    self._collect(timeout)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout  # for the whole batch
            for i, fut in enumerate(self._futures):
                if i in self._results:
                    continue
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    self._results[i] = BatchResult(i, "complete", fut.result(timeout=left))
                except TimeoutError:
                    continue  # "timeout" in this answer, not kept: a later wait sees it end
                except Exception as exc:  # noqa: BLE001 - one failed op fails only itself
                    self._results[i] = BatchResult(i, "failed", 0, exc)
        return [self._results.get(i, BatchResult(i, "timeout")) for i in range(len(self._ops))]

    def _collect(self, timeout: float | None) -> None:
        """The engine batch's results so far (waiting up to `timeout`); it ends once all are in."""
        assert self._native is not None
        if self._native.collect(self._results, timeout):
            self._destroy()

    def cancel(self) -> None:
        """Cancel what has not completed; `wait()` then reports those as "canceled"."""
        if self._native_engine_name is not None:
            with self._lock:
                if self._native is None:
                    return
                self._native.cancel()
                self._native.collect(self._results, 0)  # what completed before the cancel took effect
                for i in range(len(self._ops)):
                    self._results.setdefault(i, BatchResult(i, "canceled"))
                self._destroy()
        else:
            for i, fut in enumerate(self._futures):
                if fut.cancel():
                    self._results[i] = BatchResult(i, "canceled")

    def _destroy(self) -> None:
        native, self._native = self._native, None
        if native is not None:
            native.close()
        self._release_files()

    def _release_files(self) -> None:
        leases, self._leases = self._leases, []
        for lease in leases:
            lease.release()

    def _drain(self) -> None:
        """See every operation of a submitted engine batch to its end, then release the batch and
        its files; run by `close()` and by a file's `close()`. The results stay for `wait()`."""
        with self._lock:
            if self._native is None:
                return
            try:
                self._collect(None)
            except PygdsError as exc:  # the status is lost: stop what runs; each unfinished operation fails with why
                with contextlib.suppress(PygdsError):
                    self._native.cancel()
                for i in range(len(self._ops)):
                    self._results.setdefault(i, BatchResult(i, "failed", 0, exc))
            finally:
                self._destroy()

    def close(self) -> None:
        """Finish the operations submitted (their results stay for `wait()`), then release the
        engine's batch."""
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
