"""The engines, in the order `auto` tries them, and the choice of one (h5py's `_drivers` is the model).

`_ENGINES` is the one list: a new engine is a module in `pygds/engines/` and one line here. `auto`
picks the first GPU-direct engine whose own check passes, unless that engine itself prefers POSIX
here (cuFile without nvidia-fs), else the POSIX fallback, and says why. The choice is logged once
per distinct reason (`log_choice_once`: a fallback as a WARNING); `reset_fallback_log()` forgets
the reasons already logged, so the next one logs again.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from .._probe import Check
from ..errors import DriverUnavailableError, InvalidArgumentError
from . import cufile, hipfile, posix
from .base import Engine

log = logging.getLogger(__name__)

_ENGINES: dict[str, Engine] = {engine.name: engine for engine in (
    cufile.ENGINE,
    hipfile.ENGINE,
    posix.ENGINE,
)}
FALLBACK = posix.ENGINE.name
ENGINES: tuple[str, ...] = ("auto", *_ENGINES)
"""Every engine name a caller may ask for: "auto", then the engines in the order `auto` tries them."""
ENGINE_ENV = "PYGDS_ENGINE"


def get(name: str) -> Engine:
    """The engine called `name` (not "auto": see `choose_engine`)."""
    try:
        return _ENGINES[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown engine {name!r}; choose one of {', '.join(_ENGINES)}") from None


def all_engines() -> tuple[Engine, ...]:
    """Every engine, in the order `auto` tries them."""
    return tuple(_ENGINES.values())


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs and why; `fallback`: `auto` found no usable GPU-direct engine."""

    name: str
    reason: str
    fallback: bool = False


def requested_engine(engine: str | None) -> str:
    """The engine asked for: the argument, else `PYGDS_ENGINE`, else `auto`; validated."""
    name = (engine or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if name not in ENGINES:
        raise InvalidArgumentError(f"unknown engine {name!r} in {_source(engine)}; choose one of {', '.join(ENGINES)}")
    return name


def _source(engine: str | None) -> str:
    return "engine argument" if engine else ENGINE_ENV


def _first_usable() -> tuple[Engine | None, str, list[tuple[Engine, Check]]]:
    """The first GPU-direct engine whose check passes and why (else None), and the failed checks of
    the engines tried before it."""
    refusals = []
    for engine in _ENGINES.values():
        if not engine.gpu_direct:
            continue
        check = engine.check()
        if check.ok:
            return engine, check.reason, refusals
        refusals.append((engine, check))
    return None, "", refusals


def choose_engine(engine: str | None = None) -> EngineChoice:
    """Resolve `auto` to the engine that will work here, with the reason, without opening anything.

    `auto` picks the first GPU-direct engine in `ENGINES` order whose check passes (cuFile, then
    hipFile) unless that engine prefers POSIX here (`Engine.preference`: cuFile without nvidia-fs
    runs POSIX I/O underneath, slower than pygds's own), else POSIX. An explicit engine is returned
    as asked; opening it reports its own errors.
    """
    name = requested_engine(engine)
    if name != "auto":
        return EngineChoice(name, f"requested ({_source(engine)})")
    found, reason, refusals = _first_usable()
    if found is None:
        return EngineChoice(FALLBACK, "; ".join(f"{e.label}: {check.reason}" for e, check in refusals), True)
    preference = found.preference()
    if not preference.ok:
        return EngineChoice(FALLBACK, f"{found.label} is usable ({reason}) but {preference.reason}")
    return EngineChoice(found.name, f"{reason}; {preference.reason}" if preference.reason else reason)


def gpu_direct_engine(engine: str | None = None) -> Engine:
    """The GPU-direct engine a driver or registration is for: as asked (argument, else `PYGDS_ENGINE`,
    else `auto`: the first usable one). Raises `DriverUnavailableError` naming every engine's reason
    when `auto` finds none, or when the engine asked for has no driver (POSIX)."""
    name = requested_engine(engine)
    if name == "auto":
        found, _, refusals = _first_usable()
        if found is None:
            raise DriverUnavailableError("no GPU-direct engine can be used here: " + "; ".join(
                f"{e.label}: {check.reason}" + (f" (fix: {check.fix})" if check.fix else "") for e, check in refusals))
        return found
    chosen = get(name)
    if not chosen.gpu_direct:
        raise DriverUnavailableError(f"the {chosen.label} engine ({_source(engine)}) has no driver and registers no "
                                     "memory. Fix: ask for engine='auto', 'cufile' or 'hipfile'")
    return chosen


_logged: set[str] = set()
_log_lock = threading.Lock()


def log_choice_once(choice: EngineChoice) -> None:
    """Log why `auto` chose an engine, once per distinct reason, never once per file: a WARNING for a
    fallback (no GPU-direct engine usable), INFO for a preference."""
    if choice.fallback:
        log_fallback_once(choice.reason)
    elif _first_time(f"{choice.name}: {choice.reason}"):
        log.info("pygds: engine 'auto' uses %s because %s", choice.name, choice.reason)


def log_fallback_once(reason: str) -> None:
    """One WARNING per distinct reason for falling back to POSIX, never one per I/O."""
    if _first_time(reason):
        log.warning("pygds: using the POSIX engine because %s", reason)


def _first_time(reason: str) -> bool:
    with _log_lock:
        if reason in _logged:
            return False
        _logged.add(reason)
        return True


def reset_fallback_log() -> None:
    """Forget which reasons were logged: the next choice or fallback for each logs again."""
    with _log_lock:
        _logged.clear()
