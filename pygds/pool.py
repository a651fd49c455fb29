"""The shared thread pool that large requests are split over, and its two knobs.

Like KvikIO: a request larger than the task size becomes tasks of that size run on one process-wide
pool. `PYGDS_NTHREADS` (default 4) and `PYGDS_TASK_SIZE` (bytes, default 4 MiB) set the defaults, read
on first use (a bad value raises `InvalidArgumentError` naming the variable there, not at import);
`set_num_threads` / `set_task_size` change them at run time. A synchronous request's own thread
works through the tasks too instead of only waiting, so it is never held up by pool threads that
are slow to start (busy machine, few cores), and one thread does it all when the count is 1.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import InvalidArgumentError

_lock = threading.Lock()


class _ThreadState(threading.local):
    worker = False  # a class default: looking it up never raises, which keeps `inline` cheap


_local = _ThreadState()


MIN_TASK_SIZE = 4096
"""The smallest task size: a request of at most this many bytes is never split."""


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgumentError(f"{name}={raw!r} is not an integer; unset it or give a positive integer") from None
    if value < minimum:
        raise InvalidArgumentError(f"{name}={raw!r} must be at least {minimum}")
    return value


_threads: int | None = None  # from PYGDS_NTHREADS on first use, then set_num_threads
_task_size: int | None = None  # from PYGDS_TASK_SIZE on first use, then set_task_size
_executor: ThreadPoolExecutor | None = None


def num_threads() -> int:
    """Threads that work on one split request (`PYGDS_NTHREADS`, default 4)."""
    global _threads
    if _threads is None:
        _threads = _env_int("PYGDS_NTHREADS", 4)
    return _threads


def task_size() -> int:
    """Bytes per task of a split request (`PYGDS_TASK_SIZE`, default 4 MiB)."""
    global _task_size
    if _task_size is None:
        _task_size = _env_int("PYGDS_TASK_SIZE", 4 << 20, MIN_TASK_SIZE)
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
    if int(nbytes) < MIN_TASK_SIZE:
        raise InvalidArgumentError(f"task size must be at least {MIN_TASK_SIZE} bytes, got {nbytes}")
    _task_size = int(nbytes)


def mark_io_thread() -> None:
    """Run the calling thread's requests whole, never split over the pool.

    For threads that are themselves one of many parallel I/O workers (pass it as a
    `ThreadPoolExecutor` initializer): their requests already run side by side, so splitting each
    one again would only add hand-offs and break the kernel's sequential readahead. pygds's own pool
    threads are marked so too, which is also what keeps nested requests from deadlocking it.
    """
    _local.worker = True


def inline(size: int) -> bool:
    """True when a synchronous request of `size` bytes runs as one task on the calling thread: it
    fits in one task, or the caller is an I/O thread (`mark_io_thread`)."""
    return size <= task_size() or _local.worker


def submit(fn: Callable[..., object], *args: object) -> Future:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(num_threads(), thread_name_prefix="pygds-io", initializer=mark_io_thread)
        executor = _executor
    return executor.submit(fn, *args)


class Request:
    """One request's tasks `task(start, n)` over [0, size) in `step`-byte pieces (default: the task
    size), taken one at a time by pool threads, by a synchronous caller, and by `work()` from
    anyone who must see the request finished (`File.close` helps so, which keeps it from waiting on
    pool threads that are busy or blocked on it).

    The future gets the bytes moved from the start up to the first piece that came back short
    (a read reaching the end of the file: pieces after it may still have moved bytes, of a file
    that grew meanwhile, but a count never covers a hole), or the first error; after an error no
    further piece starts. `future.cancel()` succeeds only before the first piece has started. `finish`
    runs once when the last piece taken has ended, before the future is resolved, so no callback of
    the future runs before it.
    """

    def __init__(self, task: Callable[[int, int], int], size: int, *, step: int | None = None,
                 finish: Callable[[], None] | None = None) -> None:
        self.task, self.size, self.finish = task, size, finish
        self.step = step or task_size()
        self.count = max(1, -(-size // self.step))
        self.next = 0
        self.left = self.count
        self.end = size  # where the bytes moved from the start end: lowered by a short piece
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.future: Future = Future()

    def start(self, *, caller_helps: bool) -> Future:
        """Hand the pieces to the pool; the future of the sum.

        With `caller_helps` the calling thread works through the pieces too before this returns
        (the future is then done or nearly so); the pool lends at most `num_threads() - 1` threads
        more, so `num_threads()` threads work on one request in all. Without it (futures API) the
        pool lends up to `num_threads()` threads and this returns at once.
        """
        own = 1 if caller_helps else 0
        for _ in range(min(num_threads(), self.count) - own):
            submit(self.work)
        if caller_helps:
            self.work()
        return self.future

    def _take(self) -> int | None:
        """The next piece's index, or None when none is left to start. The first piece marks the
        future running, so a request can be cancelled only before any of it ran."""
        with self.lock:
            i = self.next
            if i >= self.count:
                return None
            if i or self.future.set_running_or_notify_cancel():
                self.next = i + 1
                return i
            self.next, self.left = self.count, 0  # cancelled before it started: nothing runs
        self._resolve()
        return None

    def work(self) -> None:
        """Run pieces nobody has taken yet, on the calling thread, until none is left."""
        step, size = self.step, self.size
        while (i := self._take()) is not None:
            start = i * step
            n = min(step, size - start)
            error = None
            try:
                got = self.task(start, n)
            except BaseException as exc:  # noqa: BLE001 - handed to the future, raised by its result()
                got, error = n, exc
            with self.lock:
                if got < n:
                    self.end = min(self.end, start + got)
                if error is not None and self.error is None:
                    self.error = error
                    self.left -= self.count - self.next  # the pieces nobody took will never run
                    self.next = self.count
                self.left -= 1
                finished = self.left == 0
            if finished:
                self._resolve()

    def _resolve(self) -> None:
        finish, self.finish, self.task = self.finish, None, None  # drop what holds the caller's buffer
        if finish is not None:
            finish()
        if self.future.cancelled():
            return  # cancelled before it started
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.end)
