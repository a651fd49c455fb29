"""cuFile's batch API (`cuFileBatchIOSetUp`/`Submit`/`GetStatus`/`Cancel`/`Destroy`) for one batch.

Only device (and managed) memory on cuFile files goes this way: in compatibility mode cuFile's
batches into host memory fail intermittently, so `pygds.Batch` runs those on the thread pool.
Each operation succeeds or fails on its own; its result says which.
"""
from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence

from ... import _cufile_abi as abi
from ..._lib import cufile
from ...errors import PygdsError, check_status, decode_batch_event
from ..base import BatchOp, BatchResult, EngineBatch
from .handle import CuFileHandle

_FINISHED = (abi.CUFILE_COMPLETE, abi.CUFILE_FAILED, abi.CUFILE_CANCELED, abi.CUFILE_TIMEOUT, abi.CUFILE_INVALID)


def accepts(view_kind: str) -> bool:
    """Whether cuFile's batch API takes memory of this kind."""
    return view_kind in ("device", "managed")


class CuFileBatch(EngineBatch):
    """A set-up and submitted cuFile batch; `close()` destroys it."""

    def __init__(self, ops: Sequence[BatchOp]) -> None:
        self._ops = list(ops)
        self._lib = cufile()
        self._handle = abi.CUfileBatchHandle_t()
        n = len(self._ops)
        check_status("cuFileBatchIOSetUp", self._lib.cuFileBatchIOSetUp(ctypes.byref(self._handle), n))
        params = (abi.CUfileIOParams_t * n)()
        for i, op in enumerate(self._ops):
            handle = op.handle
            assert isinstance(handle, CuFileHandle)  # the front door hands cuFile its own handles only
            base, offset = handle.target(op.view, op.size, op.buf_offset)
            p = params[i]
            p.mode = abi.CUFILE_BATCH
            p.u.batch.devPtr_base = base
            p.u.batch.file_offset = op.file_offset
            p.u.batch.devPtr_offset = offset
            p.u.batch.size = op.size
            p.fh = handle.handle
            p.opcode = abi.CUFILE_WRITE if op.write else abi.CUFILE_READ
            p.cookie = i
        self._params = params  # cuFile reads them until the batch is destroyed
        try:
            check_status("cuFileBatchIOSubmit", self._lib.cuFileBatchIOSubmit(self._handle, n, params, 0))
        except PygdsError:
            self.close()
            raise

    def collect(self, results: dict[int, BatchResult], timeout: float | None) -> bool:
        n = len(self._ops)
        events = (abi.CUfileIOEvents_t * n)()
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(results) < n:
            nr = ctypes.c_uint(n)
            wait = abi.timespec(0, 1_000_000)
            check_status("cuFileBatchIOGetStatus", self._lib.cuFileBatchIOGetStatus(
                self._handle, 0, ctypes.byref(nr), events, ctypes.byref(wait)))
            for ev in events[: nr.value]:
                i = int(ev.cookie or 0)
                if ev.status not in _FINISHED:
                    continue
                op = self._ops[i]
                name = "cuFileBatchIO write" if op.write else "cuFileBatchIO read"
                try:
                    results[i] = BatchResult(i, "complete", decode_batch_event(name, ev.status, ev.ret, path=op.path))
                except PygdsError as exc:
                    status = "canceled" if ev.status == abi.CUFILE_CANCELED else "failed"
                    results[i] = BatchResult(i, status, 0, exc)
            if deadline is not None and time.monotonic() > deadline:
                break
        return len(results) == n

    def cancel(self) -> None:
        # cuFileBatchIOCancel returns once no request is in flight (so the files may close)
        check_status("cuFileBatchIOCancel", self._lib.cuFileBatchIOCancel(self._handle))

    def close(self) -> None:
        if self._handle:
            self._lib.cuFileBatchIODestroy(self._handle)
            self._handle = abi.CUfileBatchHandle_t()
