"""`StoreOptions`: everything a `KVStore` needs, checked before anything is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pygds

from .layout import DATA_SUFFIX

CHECKSUM_MODES = ("auto", "once", "always", "off")


@dataclass(frozen=True)
class StoreOptions:
    """Everything `KVStore` needs; `config.py` builds it from the user's settings.

    paths: cache directories, a sequence or a comma list (items trimmed, empty ones dropped).
    device_id: selects the write path `paths[device_id % len(paths)]`.
    engine: one of `pygds.ENGINES` ("auto", ...), passed to `pygds.File` for data I/O.
    io_threads: workers of the I/O pool behind `submit_*`; <= 0 runs them in the caller.
    direct_io: open data files with O_DIRECT.
    direct_io_min_bytes: with `direct_io`, entries of fewer data bytes than this are written and
        read buffered (0, the default: none). A small entry costs less CPU through the page cache
        than through a device round trip, and a read may find it there; a large one costs more
        (page allocation and copy) and would only double memory that already holds it.
    data_suffix: ".kvcache.safetensors" (".weka1" on wekafs).
    tmp_max_age_s: the start-up scan removes temporary files older than this; never younger ones.
    capacity_bytes: bound on the bytes of entries in the write path; None = unbounded (default).
    capacity_fraction: bound as a fraction (0, 1] of the write path's file system size.
        When both are set the smaller bound applies.
    fsync: fsync data and metadata before publishing them.
    metadata_file: write the `.metadata` companion of each entry (default). LMCache's GdsBackend
        finds entries by it; a store whose entries no GdsBackend reads (the multiprocess-mode L2
        adapter) turns it off and writes one file with one rename per entry. The data file's own
        header is the record either way: entries with and without a `.metadata` are read,
        counted and removed alike, and a missing one is rebuilt only when this is on.
    scan: run the start-up scan of all paths in a background thread.
    index_snapshot: with `scan`, load each path's index snapshot (`<path>/.pygds-index/`) before
        the scan, so that a restart serves at once, and write it after the scan and at close. A
        snapshot is a hint the scan confirms; reads check every entry anyway.
    stats_interval_s: publish the counters to `<write path>/.pygds-stats/<host>-<pid>.json`
        this often (and at close) for `pygds cache stats`; 0 (the default) disables publishing.
    checksum: "auto" | "once" | "always" | "off". "auto" (the default) writes a checksum of the
        data when it is in host memory and verifies it on every read into host memory: on the
        CPU it costs a fraction of the I/O time, while device memory would need a copy of every
        chunk to the host, which defeats GPU-direct (key, size and header checks still run).
        "once" is "auto" hashing each data file version once per process on a local disk file
        system (`verified.py`): it trusts that no other process writes a cache file in place.
        "always" also covers device memory, through a host copy. "off" writes and verifies none.
    spread_summed_io: whether a checksummed transfer of host memory larger than pygds's task
        size moves its pieces on pygds's pool while the calling thread hashes them; None (the
        default) decides by the CPUs this process may use (`summed_io.spare_cores`).
    """

    paths: str | Sequence[str]
    device_id: int = 0
    engine: str = "auto"
    io_threads: int = 4
    direct_io: bool = False
    direct_io_min_bytes: int = 0
    data_suffix: str = DATA_SUFFIX
    tmp_max_age_s: float = 3600.0
    capacity_bytes: int | None = None
    capacity_fraction: float | None = None
    fsync: bool = False
    metadata_file: bool = True
    scan: bool = True
    index_snapshot: bool = True
    stats_interval_s: float = 0.0
    checksum: str = "auto"
    spread_summed_io: bool | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad option, its value and what it may be."""
        if self.engine not in pygds.ENGINES:
            raise ValueError(f"engine {self.engine!r} is unknown; use one of {', '.join(pygds.ENGINES)}")
        if not isinstance(self.io_threads, int):
            raise ValueError(f"io_threads must be an integer, got {self.io_threads!r}")
        limit = self.direct_io_min_bytes
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"direct_io_min_bytes must be an integer >= 0, got {limit!r}")
        if not self.tmp_max_age_s >= 0:
            raise ValueError(f"tmp_max_age_s must be >= 0 seconds, got {self.tmp_max_age_s!r}")
        cap = self.capacity_bytes
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0):
            raise ValueError(f"capacity_bytes must be a positive integer or None, got {cap!r}")
        frac = self.capacity_fraction
        if frac is not None and not (isinstance(frac, (int, float)) and 0 < frac <= 1):
            raise ValueError(f"capacity_fraction must be in (0, 1] or None, got {frac!r}")
        if self.checksum not in CHECKSUM_MODES:
            raise ValueError(
                f"checksum {self.checksum!r} is unknown; use one of {', '.join(CHECKSUM_MODES)}"
            )
