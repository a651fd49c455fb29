"""The shared thread pool that large requests are split over, and its two knobs.

Like KvikIO: a request larger than the task size becomes tasks of that size run on one process-wide
pool. `PYGDS_NTHREADS` (default 4) and `PYGDS_TASK_SIZE` (bytes, default 4 MiB) set the defaults, read
on first use (a bad value raises `InvalidArgumentError` naming the variable there, not at import);
`set_num_threads` / `set_task_size` change them at run time. A synchronous request's own thread
works through the tasks too instead of only waiting, so it is never held up by pool threads that
are slow to start (busy machine, few cores), and one thread does it all when the count is 1.

The hand-off is kept short because it is paid on every split request: pool threads wait on one
queue for a request, take its pieces from a shared counter, and a synchronous caller waits on one
lock per request (no future, no allocation per piece). Queued work still runs at interpreter exit.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from .errors import InvalidArgumentError

log = logging.getLogger(__name__)

_lock = threading.Lock()


class _ThreadState(threading.local):
    worker = False  # a class default: looking it up never raises, which keeps `inline` cheap
    pooled = False  # one of this pool's own threads


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
_queue: queue.SimpleQueue = queue.SimpleQueue()  # work for the pool threads: callables; None stops one thread
_workers: list[threading.Thread] = []  # pool threads started and not told to stop
_started: list[threading.Thread] = []  # every pool thread that may still be running: joined at exit
_exiting = False  # set at interpreter exit: work handed over afterwards runs on the caller


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
    """Resize the pool (takes effect for requests submitted afterwards; threads beyond the new count
    stop once the work queued before the call has been taken)."""
    global _threads
    if int(n) < 1:
        raise InvalidArgumentError(f"thread count must be at least 1, got {n}")
    with _lock:
        _threads = int(n)
        while len(_workers) > _threads:
            _workers.pop()
            _queue.put(None)


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


def on_pool_thread() -> bool:
    """True on one of the pool's own threads, where waiting for other pool work could wait for ever
    (every pool thread might be waiting so)."""
    return _local.pooled


def _serve(get: Callable[[], Callable[[], None] | None]) -> None:
    """A pool thread: run what the queue hands over until told to stop."""
    mark_io_thread()
    _local.pooled = True
    while (item := get()) is not None:
        try:
            item()
        except BaseException:  # work items keep their own errors: this only guards the thread against a bug
            log.exception("pygds pool: a work item raised")


def _hand_off(item: Callable[[], None], copies: int) -> None:
    """Queue `item` `copies` times for the pool threads (started on first use, up to `num_threads()`).
    Once the interpreter exits, the caller runs it instead: a thread started then could take a
    stop mark meant for one the exit waits for."""
    if len(_workers) < num_threads():  # always so once the exit has cleared `_workers`
        with _lock:  # the lock the exit takes to set `_exiting`
            exiting = _exiting
            _started[:] = [t for t in _started if t.is_alive()]
            while not exiting and len(_workers) < num_threads():
                worker = threading.Thread(target=_serve, args=(_queue.get,), daemon=True,
                                          name=f"pygds-io-{len(_started)}")
                worker.start()
                _workers.append(worker)
                _started.append(worker)
        if exiting:  # outside the lock: the item may hand over work itself
            for _ in range(copies):
                item()
            return
    put = _queue.put
    for _ in range(copies):
        put(item)


def submit(fn: Callable[..., object], *args: object) -> Future:
    """Run `fn(*args)` on a pool thread; the future of its result."""
    future: Future = Future()

    def item() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the future
            future.set_exception(exc)
        else:
            future.set_result(result)

    _hand_off(item, 1)
    return future


@atexit.register
def _finish_queued_work() -> None:
    """At exit, let the pool threads (daemons) take every item queued so far, then stop, as
    `concurrent.futures` pools do: a write handed to the pool is never dropped by an exit."""
    global _exiting
    with _lock:
        _exiting = True  # no thread starts after this (`_hand_off`)
        for _ in _workers:  # with the stop marks of earlier shrinks, one for every thread alive
            _queue.put(None)
        _workers.clear()
        started = list(_started)
    for worker in started:
        worker.join()


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: start afresh."""
    global _queue, _lock
    _lock = threading.Lock()
    _queue = queue.SimpleQueue()
    _workers.clear()
    _started.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _acquire_through_interrupts(lock: threading.Lock) -> None:
    """`lock.acquire()`, taken up again after every interrupt until it is held (an interrupted
    `acquire` raises without taking the lock)."""
    held = False
    while not held:
        try:
            held = lock.acquire()
        except BaseException:  # noqa: BLE001 - the first interrupt is raised by the caller
            pass


class Request:
    """One request's tasks `task(start, n)` over [0, size) in `step`-byte pieces (default: the task
    size), taken one at a time by pool threads, by a synchronous caller (`run`), and by `work()`
    from anyone who must see the request finished (`File.close` helps so, which keeps it from
    waiting on pool threads that are busy or blocked on it).

    The count is the bytes moved from the start up to the first piece that came back short (a read
    reaching the end of the file: pieces after it may still have moved bytes, of a file that grew
    meanwhile, but a count never covers a hole), or the first error is raised; after an error no
    further piece starts. `finish` runs once when the last piece taken has ended, before the count
    is handed over (so before any callback of `start`'s future runs).
    """

    __slots__ = ("count", "done", "end", "error", "finish", "future", "left", "lock", "next", "size", "step",
                 "task")

    def __init__(self, task: Callable[[int, int], int], size: int, *, step: int | None = None,
                 finish: Callable[[], None] | None = None) -> None:
        self.task: Callable[[int, int], int] | None = task
        self.size, self.finish = size, finish
        self.step = step or task_size()
        self.count = max(1, -(-size // self.step))
        self.next = 0
        self.left = self.count
        self.end = size  # where the bytes moved from the start end: lowered by a short piece
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.done = threading.Lock()  # held until the last piece taken has ended
        self.done.acquire()
        self.future: Future | None = None  # only for `start`

    def run(self) -> int:
        """Do the request on the calling thread with up to `num_threads() - 1` pool threads
        helping; the count (or the first error, raised)."""
        helpers = min(num_threads(), self.count) - 1
        if helpers > 0:
            _hand_off(self.work, helpers)
        self.work()
        try:
            self.done.acquire()
        except BaseException:
            # Ctrl-C while helpers move pieces: they must end before the caller returns, whose
            # file may then be closed and its descriptor number reused at once
            self._stop()
            _acquire_through_interrupts(self.done)
            raise
        error, self.error = self.error, None  # no cycle through the traceback this raise makes
        if error is None:
            return self.end
        try:
            raise error
        finally:
            error = None

    def start(self) -> Future:
        """Hand the request to up to `num_threads()` pool threads and return at once: the future of
        the count. `future.cancel()` succeeds only before the first piece has started."""
        future = self.promise()
        _hand_off(self.work, min(num_threads(), self.count))
        return future

    def promise(self) -> Future:
        """The future `start` returns, made now if not yet: a request that someone may `work()`
        through before `start` (a `File.close` draining it) must resolve a future, not `done`."""
        if self.future is None:
            self.future = Future()
        return self.future

    def _stop(self) -> None:
        """Start no further piece; when none is running either, the request ends here."""
        with self.lock:
            untaken = self.count - self.next
            self.next = self.count
            self.left -= untaken
            finished = untaken > 0 and self.left == 0
        if finished:
            self._resolve()

    def _take(self) -> int | None:
        """The next piece's index, or None when none is left to start. The first piece marks the
        future running, so a request can be cancelled only before any of it ran."""
        with self.lock:
            i = self.next
            if i >= self.count:
                return None
            if i or self.future is None or self.future.set_running_or_notify_cancel():
                self.next = i + 1
                return i
            self.next, self.left = self.count, 0  # cancelled before it started: nothing runs
        self._resolve()
        return None

    def work(self) -> None:
        """Run pieces nobody has taken yet, on the calling thread, until none is left."""
        step, size, task = self.step, self.size, self.task
        while (i := self._take()) is not None:
            start = i * step
            n = min(step, size - start)
            error = None
            try:
                got = task(start, n)  # type: ignore[misc]  # set while a piece is left to take
            except BaseException as exc:  # noqa: BLE001 - handed to the caller or the future
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
                return

    def _resolve(self) -> None:
        finish, self.finish, self.task = self.finish, None, None  # drop what holds the caller's buffer
        if finish is not None:
            finish()
        future = self.future
        if future is None:
            self.done.release()
            return
        if future.cancelled():
            return  # cancelled before it started
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(self.end)
