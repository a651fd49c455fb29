"""pygds: GPU-Direct-Storage for Python with nothing to compile.

ctypes bindings over NVIDIA cuFile (`libcufile.so`) and AMD hipFile (`libhipfile.so`), equals behind
one interface, and a POSIX engine for machines where GPU-direct is absent or fails. Importing pygds
loads no native library; the first use of an engine does, after checks that keep it from hanging.

    import pygds
    with pygds.File("/mnt/nvme/data.bin", "w") as f:
        f.write(tensor)                      # CUDA or CPU tensor, CuPy array, bytes, ...
    with pygds.File("/mnt/nvme/data.bin", "r") as f:
        n = f.read(out_tensor)               # bytes read
        fut = f.pread(out_tensor)            # concurrent.futures.Future
"""
from .batch import Batch, BatchResult
from .driver import Driver, DriverProperties, RegisteredBuffer, close_shared
from .engines.registry import ENGINES, EngineChoice, choose_engine, reset_fallback_log
from .errors import (
    CudaError,
    CuFileError,
    DriverUnavailableError,
    FileClosedError,
    HipError,
    HipFileError,
    InvalidArgumentError,
    IOFailedError,
    LibraryNotFoundError,
    NotSupportedError,
    PygdsError,
    UnsupportedBufferError,
)
from .file import File
from .memory import BufferView, Pointer, as_buffer
from .pool import num_threads, set_num_threads, set_task_size, task_size
from .stream import StreamIO, reset_stream_io

__version__ = "0.1.0"

__all__ = [
    "Batch", "BatchResult", "BufferView", "CuFileError", "CudaError", "Driver", "DriverProperties",
    "DriverUnavailableError", "ENGINES", "EngineChoice", "File", "FileClosedError", "HipError", "HipFileError",
    "IOFailedError", "InvalidArgumentError", "LibraryNotFoundError", "NotSupportedError", "Pointer", "PygdsError",
    "RegisteredBuffer", "StreamIO", "UnsupportedBufferError", "as_buffer", "choose_engine", "close_shared",
    "num_threads", "reset_fallback_log", "reset_stream_io", "set_num_threads", "set_task_size", "task_size",
    "__version__",
]
