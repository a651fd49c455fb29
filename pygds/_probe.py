"""A check's outcome (`Check`) and a probe bounded in time (`within`): the pieces every never-hang
check is made of, from the GPU runtime probes of `cuda`/`hip` to each engine's "can I run here"."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Check:
    """The outcome of one check: whether it passed, why, and what to do about it."""

    ok: bool
    reason: str
    fix: str = ""


def within(probe: Callable[[], Check], seconds: float, name: str, silent: Check) -> Check:
    """`probe()` on a daemon thread, or `silent` when it has not answered within `seconds`: a hung
    driver call cannot be interrupted, only left behind."""
    result: list[Check] = []
    worker = threading.Thread(target=lambda: result.append(probe()), daemon=True, name=name)
    worker.start()
    worker.join(seconds)
    return result[0] if result else silent
