"""The one interface between the front doors (`File`, `Driver`, `Batch`, stream I/O) and an engine.

An `Engine` says whether it can run here and why not (without ever hanging), opens an
`EngineHandle` per file and, where it has them, a driver reference, registrations of memory, a
batch API and stream-ordered I/O. A handle does one synchronous, possibly short, transfer per
call; `pygds.File` does the splitting over threads, the short-read accounting and the argument
checks, so engines stay small. The front doors use these classes and nothing else of an engine.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._probe import Check
from ..errors import InvalidArgumentError
from ..memory import BufferView

if TYPE_CHECKING:
    from .gds import GdsDriver, Registry


@dataclass
class BatchResult:
    """The outcome of one batch operation: its index in submission order, status ("complete",
    "failed", "canceled" or "timeout"), bytes moved or the error."""

    index: int
    status: str
    nbytes: int = 0
    error: BaseException | None = None


@dataclass(frozen=True)
class BatchOp:
    """One checked operation handed to an engine's batch API, on a handle its `File` keeps open."""

    handle: EngineHandle
    view: BufferView
    size: int
    file_offset: int
    buf_offset: int
    write: bool
    path: str


class EngineBatch(ABC):
    """A batch submitted through an engine's own batch API."""

    @abstractmethod
    def collect(self, results: dict[int, BatchResult], timeout: float | None) -> bool:
        """Add the results of operations that finished, waiting up to `timeout` seconds (None: until
        all have); True once every operation has a result."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop what has not completed; returns once no operation is in flight."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine's batch; harmless to call twice."""


class StreamOp(ABC):
    """One stream-ordered transfer an engine has queued on a GPU stream."""

    @abstractmethod
    def finish(self) -> int | None:
        """Wait for the stream; the bytes moved, or None when the engine could not do it this way and
        the caller must redo it on the threaded path (cuFile's -EIO where its stream path fails,
        e.g. a driver that cannot run libcufile's copy kernel)."""


class EngineHandle(ABC):
    """One open file as an engine sees it."""

    engine: str

    @abstractmethod
    def read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        """Read up to `size` bytes into `view` at `buf_offset`; return bytes read (0 at EOF)."""

    @abstractmethod
    def write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        """Write up to `size` bytes from `view` at `buf_offset`; return bytes written."""

    @abstractmethod
    def close(self) -> None:
        """Release what the engine holds for this file (not the file descriptors). `File` calls
        it once, after every transfer on the file has ended."""

    def whole_writes(self, view: BufferView) -> bool:
        """True when a large write from `view` should go in one call rather than split over the
        pool (splitting would only queue the pieces on a lock the file system holds)."""
        return False

    def stream_io(self, view: BufferView, size: int, file_offset: int, buf_offset: int, stream: int,
                  *, write: bool) -> StreamOp | None:
        """Queue a stream-ordered transfer on `stream`, or None where this engine has none (now):
        the caller then synchronizes the stream and transfers on the calling thread."""
        return None


class Engine(ABC):
    """An I/O engine: its name, whether it can run here, and what it offers the front doors.

    `gpu_direct` engines have a driver and registrations and are what `auto` tries, in the order of
    `pygds.engines.registry`; the others are fallbacks."""

    name: str
    label: str  # how messages name it: "cuFile"
    gpu_direct = True

    @abstractmethod
    def check(self) -> Check:
        """Whether this engine can run here and why not, decided within about a second."""

    def preference(self) -> Check:
        """Whether `auto` should use this engine here once its `check` passed (ok), or the POSIX
        engine instead, because this one would only do the same slower (a compatibility mode that
        is POSIX I/O underneath); the reason says why, either way."""
        return Check(True, "")

    @abstractmethod
    def open(self, fd: int, direct_fd: int | None, path: str) -> EngineHandle:
        """A handle on an open file (`direct_fd`: the same file opened with O_DIRECT, or None)."""

    def driver(self) -> GdsDriver:
        """A new reference to this engine's process-wide driver."""
        raise InvalidArgumentError(f"the {self.label} engine has no driver and registers no memory; "
                                   "use engine='auto', 'cufile' or 'hipfile'")

    @property
    def registry(self) -> Registry | None:
        """The address ranges registered with this engine (its one registry), or None."""
        return None

    def batch_accepts(self, view: BufferView) -> bool:
        """Whether this engine's batch API takes an operation on memory like `view`."""
        return False

    def submit_batch(self, ops: Sequence[BatchOp]) -> EngineBatch:
        """Submit `ops` (all accepted by `batch_accepts`) through this engine's batch API."""
        raise InvalidArgumentError(f"the {self.label} engine has no batch API")

    def close_shared(self) -> None:
        """Drop the driver reference this engine's files share, if it keeps one."""

    def reset_stream_io(self) -> None:
        """Let stream-ordered I/O try this engine's native path again, if it gave up on it."""
