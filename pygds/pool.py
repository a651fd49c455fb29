"""The shared thread pool that large requests are split over, and its two knobs.

Like KvikIO: a request larger than the task size becomes tasks of that size run on one process-wide
pool. `PYGDS_NTHREADS` (default 4) and `PYGDS_TASK_SIZE` (bytes, default 4 MiB) set the defaults;
`set_num_threads` / `set_task_size` change them at run time.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from .errors import InvalidArgumentError

_lock = threading.Lock()
_local = threading.local()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgumentError(f"{name}={raw!r} is not an integer; unset it or give a positive integer") from None
    if value < 1:
        raise InvalidArgumentError(f"{name}={raw!r} must be at least 1")
    return value


_threads = _env_int("PYGDS_NTHREADS", 4)
_task_size = _env_int("PYGDS_TASK_SIZE", 4 << 20)
_executor: ThreadPoolExecutor | None = None


def num_threads() -> int:
    return _threads


def task_size() -> int:
    return _task_size


def set_num_threads(n: int) -> None:
    """Resize the pool (takes effect for requests submitted afterwards)."""
    global _threads, _executor
    if int(n) < 1:
        raise InvalidArgumentError(f"thread count must be at least 1, got {n}")
    with _lock:
        _threads = int(n)
        old, _executor = _executor, None
    if old is not None:
        old.shutdown(wait=False)


def set_task_size(nbytes: int) -> None:
    """Bytes per task when a request is split."""
    global _task_size
    if int(nbytes) < 4096:
        raise InvalidArgumentError(f"task size must be at least 4096 bytes, got {nbytes}")
    _task_size = int(nbytes)


def _mark_worker() -> None:
    _local.worker = True


def in_worker() -> bool:
    """True on a pool thread: nested requests run inline there so the pool cannot deadlock."""
    return getattr(_local, "worker", False)


def submit(fn: Callable[..., int], *args: object) -> Future:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(_threads, thread_name_prefix="pygds-io", initializer=_mark_worker)
        executor = _executor
    return executor.submit(fn, *args)


def gather(parts: list[Future]) -> Future:
    """One future whose result is the sum of `parts`' results, or the first error."""
    out: Future = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        errors = [p.exception() for p in parts if p.exception() is not None]
        if errors:
            out.set_exception(errors[0])
        else:
            out.set_result(sum(p.result() for p in parts))

    if not parts:
        out.set_result(0)
    for p in parts:
        p.add_done_callback(done)
    return out
