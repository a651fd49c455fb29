"""Finding and loading libcufile (and, through the same generic finder, other native libraries).

`find_library(spec)` walks an explicit path from an environment variable, the NVIDIA wheels in the
current environment, `<home>/lib*` folders named by environment variables, globbed install
folders, and finally the dynamic loader; it takes its inputs as arguments so tests can point it
anywhere. `cufile()` returns the process-wide `CuFileLib`, whose attributes resolve cuFile symbols
lazily with the prototypes of `_cufile_abi`. Loading never calls `cuFileDriverOpen` (which can hang
where `/proc/modules` is unreadable); only `cuFileGetVersion`, which needs no driver.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import re
import site
import sys
import sysconfig
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from . import _cufile_abi as abi
from .errors import LibraryNotFoundError, NotSupportedError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LibrarySpec:
    """Where a native library may live, in search order, and how to tell a user to install it."""

    name: str  # what the library is called in messages, e.g. "libcufile"
    env_var: str  # explicit path; if set it must load, nothing else is tried
    sonames: tuple[str, ...]  # file names to look for, preferred first
    wheel_subdirs: tuple[str, ...]  # folders below each site-packages folder
    home_vars: tuple[str, ...]  # environment variables naming an install root
    home_subdirs: tuple[str, ...]  # library folders below such a root (and below glob matches)
    glob_patterns: tuple[str, ...]  # install roots to glob; matches are tried newest version first
    install_hint: str  # how to fix a missing library
    symbol: str  # any exported function, to learn which file the dynamic loader picked


CUFILE_SPEC = LibrarySpec(
    name="libcufile",
    env_var="PYGDS_CUFILE_LIB",
    sonames=("libcufile.so.0", "libcufile.so"),
    # nvidia-cufile (CUDA 13) installs nvidia/cu13/lib, nvidia-cufile-cu12 installs nvidia/cufile/lib.
    wheel_subdirs=("nvidia/cu13/lib", "nvidia/cu12/lib", "nvidia/cufile/lib"),
    home_vars=("CUDA_HOME", "CUDA_PATH"),
    home_subdirs=("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"),
    glob_patterns=("/usr/local/cuda*",),
    install_hint="install it with pip install 'pygds[cuda13]' (or 'pygds[cuda12]' on CUDA 12), or set "
                 "PYGDS_CUFILE_LIB=/path/to/libcufile.so.0",
    symbol="cuFileGetVersion",
)


@dataclass(frozen=True)
class FoundLibrary:
    """A library file that loaded, and the rule that found it."""

    path: str
    source: str


def default_site_dirs() -> list[str]:
    """The current environment's site-packages folders, then the other `sys.path` folders."""
    dirs: list[str] = []
    if hasattr(site, "getsitepackages"):
        dirs += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    paths = sysconfig.get_paths()
    dirs += [paths["purelib"], paths["platlib"]]
    dirs += [p for p in sys.path if p]
    return _unique(d for d in dirs if os.path.isdir(d))


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = os.path.realpath(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _version_key(path: str) -> tuple[int, ...]:
    """Sort key putting `cuda-13.0` before `cuda-12.9` before an unversioned `cuda`."""
    numbers = re.findall(r"\d+", os.path.basename(path.rstrip("/")))
    return tuple(int(n) for n in numbers) if numbers else (-1,)


def _candidate_dirs(spec: LibrarySpec, environ: Mapping[str, str],
                    site_dirs: Sequence[str]) -> list[tuple[str, str]]:
    """(source, folder) pairs to search after the explicit path, in order."""
    dirs = [("wheel", os.path.join(site_dir, sub)) for site_dir in site_dirs for sub in spec.wheel_subdirs]
    for var in spec.home_vars:
        home = environ.get(var)
        if home:
            dirs += [(var, os.path.join(home, sub)) for sub in spec.home_subdirs]
    for pattern in spec.glob_patterns:
        roots = sorted(glob.glob(pattern), key=_version_key, reverse=True)
        dirs += [(pattern, os.path.join(root, sub)) for root in roots for sub in spec.home_subdirs]
    return dirs


def _try_load(path: str) -> str | None:
    """None if `path` loads as a shared library, else the loader's reason."""
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return str(exc)
    return None


def _loaded_path(soname: str, symbol: str) -> str:
    """The file the dynamic loader picked for `soname`, via dladdr on one of its symbols."""
    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    try:
        dladdr = ctypes.CDLL(None).dladdr
    except AttributeError:  # glibc < 2.34 keeps dladdr in libdl
        dladdr = ctypes.CDLL("libdl.so.2").dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    info = DlInfo()
    try:
        address = ctypes.cast(getattr(ctypes.CDLL(soname), symbol), ctypes.c_void_p)
    except AttributeError:
        return soname
    if dladdr(address, ctypes.byref(info)) and info.dli_fname:
        return os.path.realpath(info.dli_fname.decode())
    return soname


def find_library(spec: LibrarySpec = CUFILE_SPEC, *, environ: Mapping[str, str] | None = None,
                 site_dirs: Sequence[str] | None = None, use_loader: bool = True) -> FoundLibrary:
    """Find and test-load the library `spec` describes; raise `LibraryNotFoundError` listing every place.

    Order: `spec.env_var` (if set it must load: a bad path is an error, not a reason to go on),
    the wheels under `site_dirs`, the `spec.home_vars` roots, the `spec.glob_patterns` roots
    (newest version first), then the dynamic loader by soname (unless `use_loader` is False).
    """
    environ = os.environ if environ is None else environ
    site_dirs = default_site_dirs() if site_dirs is None else site_dirs

    explicit = environ.get(spec.env_var)
    if explicit:
        path = explicit
        if os.path.isdir(explicit):
            path = next((os.path.join(explicit, n) for n in spec.sonames
                         if os.path.exists(os.path.join(explicit, n))), os.path.join(explicit, spec.sonames[0]))
        reason = "no such file" if not os.path.exists(path) else _try_load(path)
        if reason:
            raise LibraryNotFoundError(
                f"{spec.env_var}={explicit} does not name a loadable {spec.name}: {reason}. Point "
                f"{spec.env_var} at the library file (e.g. .../{spec.sonames[0]}) or unset it to search the "
                "usual places.", library=spec.name, searched=(f"{spec.env_var}={explicit}: {reason}",))
        return FoundLibrary(os.path.abspath(path), spec.env_var)

    searched = [f"{spec.env_var}: not set"]
    for source, folder in _candidate_dirs(spec, environ, site_dirs):
        missing = True
        for soname in spec.sonames:
            path = os.path.join(folder, soname)
            if os.path.exists(path):
                missing = False
                reason = _try_load(path)
                if reason is None:
                    return FoundLibrary(os.path.abspath(path), source)
                searched.append(f"{source}: {path}: {reason}")
        if missing:
            searched.append(f"{source}: {folder}/{{{','.join(spec.sonames)}}}: not found")
    if use_loader:
        for soname in spec.sonames:
            reason = _try_load(soname)
            if reason is None:
                return FoundLibrary(_loaded_path(soname, spec.symbol), "dynamic loader")
            searched.append(f"dynamic loader: {soname}: {reason}")
    raise LibraryNotFoundError(
        f"{spec.name} not found. Looked in:\n  " + "\n  ".join(searched) + f"\nFix: {spec.install_hint}.",
        library=spec.name, searched=tuple(searched))


def version_string(version: int) -> str:
    """cuFileGetVersion's integer (1000*major + 10*minor) as "major.minor.patch", e.g. 1200 -> "1.20.0"."""
    if version <= 0:
        return "unknown"
    return f"{version // 1000}.{version % 1000 // 10}.{version % 10}"


class CuFileLib:
    """One loaded libcufile: `path`, `source`, `version`, and cuFile functions as lazy attributes.

    `lib.cuFileRead` resolves the symbol on first use with its prototype from `_cufile_abi`; a
    function this libcufile lacks raises `NotSupportedError` naming the version, never at load
    time. Construct one directly for a given file (tests do); `cufile()` shares one per process.
    """

    def __init__(self, path: str | os.PathLike[str], *, source: str = "explicit") -> None:
        self.path = os.fspath(path)
        self.source = source
        try:
            self._cdll = ctypes.CDLL(self.path, use_errno=True)
        except OSError as exc:
            raise LibraryNotFoundError(f"cannot load libcufile from {self.path}: {exc}. "
                                       f"Fix: {CUFILE_SPEC.install_hint}.", library="libcufile",
                                       searched=(f"{source}: {self.path}: {exc}",)) from None
        self.version = self._read_version()
        self.version_string = version_string(self.version)

    def _read_version(self) -> int:
        if not self.has("cuFileGetVersion"):
            return 0
        out = ctypes.c_int(0)
        status = self.cuFileGetVersion(ctypes.byref(out))
        return out.value if status.err == abi.CU_FILE_SUCCESS else 0

    def has(self, name: str) -> bool:
        """Whether this libcufile exports `name`."""
        try:
            self._cdll[name]
        except AttributeError:
            return False
        return True

    def __getattr__(self, name: str) -> Any:
        prototype = abi.PROTOTYPES.get(name)
        if prototype is None:
            raise AttributeError(f"{name!r} is not a function of cufile.h")
        try:
            fn = self._cdll[name]
        except AttributeError:
            since = abi.FUNCTION_SINCE.get(name)
            newer = f" (it first appears in libcufile {version_string(since)})" if since else ""
            raise NotSupportedError(
                f"{name} is not supported by libcufile {self.version_string} at {self.path}{newer}; install a "
                "newer nvidia-cufile wheel or CUDA toolkit, or avoid this feature") from None
        fn.restype, fn.argtypes = prototype
        self.__dict__[name] = fn  # later lookups skip __getattr__
        return fn

    def __repr__(self) -> str:
        return f"<CuFileLib {self.version_string} at {self.path} (found via {self.source})>"


_instance: CuFileLib | None = None
_instance_lock = threading.Lock()


def cufile() -> CuFileLib:
    """The process-wide libcufile, found with `find_library(CUFILE_SPEC)` on first call."""
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                found = find_library(CUFILE_SPEC)
                lib = CuFileLib(found.path, source=found.source)
                logger.info("loaded libcufile %s from %s (via %s)", lib.version_string, lib.path, lib.source)
                _instance = lib
    return _instance
