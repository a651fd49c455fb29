"""Explicit lifetimes (as in cuda.core): objects holding driver state are closed by `close()` or a
`with` block, and those whose state outlives a forgotten object are closed when collected too."""
from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T", bound="Closeable")


class Closeable:
    """`with obj:` closes `obj` at the end of the block; subclasses define `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClosedWhenCollected(Closeable):
    """Also closed when garbage collected; `close()` must be harmless to call twice."""

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
