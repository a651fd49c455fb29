"""The small interface every I/O engine implements.

An engine handle does one synchronous, possibly short, transfer per call; `pygds.File` does the
splitting over threads, the short-read accounting and the argument checks, so engines stay small.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from ..memory import BufferView


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
