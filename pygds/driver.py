"""`Driver` (a reference to a GPU-direct engine's process-wide driver) and `RegisteredBuffer`.

The same on every GPU-direct engine: `Driver(engine=...)` takes a reference to that engine's driver
(the first reference opens it, after the engine's never-hang guard passes; the last `close()`
closes it), and `register()` registers memory with it, so that a `File` on that engine hands the
library the registered base and an offset for any view inside it: zero-copy reads and writes.
"""
from __future__ import annotations

from ._lifetime import ClosedWhenCollected
from .engines import registry
from .engines.gds import DriverProperties, GdsDriver, GdsRegisteredBuffer
from .errors import InvalidArgumentError
from .memory import BufferView

__all__ = ["Driver", "DriverProperties", "RegisteredBuffer", "close_shared"]


class Driver(ClosedWhenCollected):
    """A reference to the process-wide driver of a GPU-direct engine; a context manager.

    `engine` is "cufile", "hipfile" or "auto" (the first usable one, in `pygds.ENGINES` order);
    None reads `PYGDS_ENGINE`, else "auto". `engine` names the one chosen. It raises
    `DriverUnavailableError` within a second where the engine would hang or cannot work (for
    "auto", naming every engine's reason), and `CuFileError` / `HipFileError` when opening fails.
    """

    def __init__(self, engine: str | None = None) -> None:
        chosen = registry.gpu_direct_engine(engine)
        self.engine: str = chosen.name
        self._driver: GdsDriver = chosen.driver()

    @property
    def closed(self) -> bool:
        return self._driver.closed

    def close(self) -> None:
        """Drop this reference; the last one closes the driver. Closing twice is harmless."""
        driver = getattr(self, "_driver", None)  # absent when __init__ failed
        if driver is not None:
            driver.close()

    def use_count(self) -> int:
        """The reference count the library itself keeps (`cuFileUseCount` / `hipFileUseCount`)."""
        return self._driver.use_count()

    @property
    def properties(self) -> DriverProperties:
        """The driver's properties (`cuFileDriverGetProperties`; hipFile does not implement it)."""
        return self._driver.properties

    def set_poll_mode(self, enabled: bool, threshold_kb: int = 4) -> None:
        self._driver.set_poll_mode(enabled, threshold_kb)

    def set_max_direct_io_size(self, size_kb: int) -> None:
        self._driver.set_max_direct_io_size(size_kb)

    def set_max_cache_size(self, size_kb: int) -> None:
        self._driver.set_max_cache_size(size_kb)

    def set_max_pinned_mem_size(self, size_kb: int) -> None:
        self._driver.set_max_pinned_mem_size(size_kb)

    def get_parameter(self, name: str) -> int | bool | str:
        """A parameter by its C enum name (for cuFile also without the `CUFILE_PARAM_` prefix)."""
        return self._driver.get_parameter(name)

    def set_parameter(self, name: str, value: int | bool | str) -> None:
        """Set a parameter by name; most take effect only when the driver next opens (libcufile
        1.17 and later: 1.15 and 1.16 ignore parameters staged before the open)."""
        self._driver.set_parameter(name, value)

    def parameters(self) -> dict[str, int | bool | str]:
        """Every parameter by name, or why it cannot be read."""
        return self._driver.parameters()

    def parameter_range(self, name: str) -> tuple[int, int]:
        """(min, max) of a size_t parameter (`cuFileGetParameterMinMaxValue`)."""
        return self._driver.parameter_range(name)

    def register(self, buf: object, nbytes: int | None = None, flags: int = 0) -> RegisteredBuffer:
        """Register `buf` with this driver's engine for the lifetime of the returned object."""
        return RegisteredBuffer(buf, nbytes, flags=flags, driver=self)

    def __repr__(self) -> str:
        return f"<pygds.Driver {self.engine}{' closed' if self.closed else ''}>"


class RegisteredBuffer(ClosedWhenCollected):
    """Memory registered with a GPU-direct engine until `close()`; a context manager.

    Any `File` read or write on that engine into memory inside this range passes the registered
    base and an offset, so no bounce buffer is involved. Without `driver` it takes its own
    reference to the driver of `engine` (as for `Driver`), dropped on `close()`.
    """

    def __init__(self, buf: object, nbytes: int | None = None, *, flags: int = 0, driver: Driver | None = None,
                 engine: str | None = None) -> None:
        self._registration: GdsRegisteredBuffer | None = None
        self._own_driver: Driver | None = None
        if driver is not None and engine and registry.requested_engine(engine) not in ("auto", driver.engine):
            raise InvalidArgumentError(f"engine {engine!r} differs from the engine of the driver given "
                                       f"({driver.engine!r}); pass one of them")
        if driver is None:
            driver = self._own_driver = Driver(engine)
        self.driver = driver
        try:
            self._registration = driver._driver.register(buf, nbytes, flags)
        except BaseException:
            self.close()
            raise
        self.view: BufferView = self._registration.view

    @property
    def engine(self) -> str:
        return self.driver.engine

    @property
    def closed(self) -> bool:
        return self._registration is None

    @property
    def ptr(self) -> int:
        return self.view.ptr

    @property
    def nbytes(self) -> int:
        return self.view.nbytes

    def close(self) -> None:
        """Deregister (once) and drop the driver reference this buffer took."""
        registration, self._registration = getattr(self, "_registration", None), None
        try:
            if registration is not None:
                registration.close()
        finally:
            own, self._own_driver = getattr(self, "_own_driver", None), None
            if own is not None:
                own.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.nbytes} bytes at {self.ptr:#x}"
        return f"<pygds.RegisteredBuffer {self.engine} {state}>"


def close_shared() -> None:
    """Drop the driver references files share (cuFile keeps one open until exit; it reopens on the
    next file). Call it only when no GPU-direct `File` is open, e.g. before handing the process's
    cuFile state to raw `libcufile` calls or before a fork."""
    for engine in registry.all_engines():
        engine.close_shared()
