"""Finding and loading libcufile and libhipfile (and, through the same generic finder, the HIP runtime).

`find_library(spec)` walks an explicit path from an environment variable, the NVIDIA wheels in the
current environment, `<home>/lib*` folders named by environment variables, globbed install
folders, and finally the dynamic loader; it takes its inputs as arguments so tests can point it
anywhere. `cufile()` returns the process-wide `CuFileLib`, whose attributes resolve cuFile symbols
lazily with the prototypes of `_cufile_abi`; `hipfile()` does the same for `HipFileLib` and
`_hipfile_abi`. Loading never opens a driver (cuFileDriverOpen can hang where `/proc/modules` is
unreadable); it calls only cuFileGetVersion / hipFileGetVersion, which need none.
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
from . import _hipfile_abi as hip_abi
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

# ROCm installs under /opt/rocm (usually a link to /opt/rocm-<version>); ROCm >= 7.11 may put the
# libraries under /opt/rocm/core-<version>/lib instead.
_ROCM_HOME_VARS = ("ROCM_PATH", "ROCM_HOME", "HIP_PATH")
_ROCM_GLOBS = ("/opt/rocm", "/opt/rocm-*", "/opt/rocm*/core-*")

HIPFILE_SPEC = LibrarySpec(
    name="libhipfile",
    env_var="PYGDS_HIPFILE_LIB",
    sonames=("libhipfile.so.0", "libhipfile.so"),  # the soversion is hipFile's major version
    wheel_subdirs=(),
    home_vars=_ROCM_HOME_VARS,
    home_subdirs=("lib", "lib64"),
    glob_patterns=_ROCM_GLOBS,
    install_hint="install hipFile (it ships with ROCm >= 7.2; on Ubuntu the hipfile package, see AMD's "
                 "hipFile install guide), or set PYGDS_HIPFILE_LIB=/path/to/libhipfile.so.0",
    symbol="hipFileGetVersion",
)

HIP_RUNTIME_SPEC = LibrarySpec(
    name="libamdhip64",
    env_var="PYGDS_AMDHIP_LIB",
    sonames=("libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so"),
    wheel_subdirs=(),
    home_vars=_ROCM_HOME_VARS,
    home_subdirs=("lib", "lib64"),
    glob_patterns=_ROCM_GLOBS,
    install_hint="install ROCm (the HIP runtime, libamdhip64), or set PYGDS_AMDHIP_LIB=/path/to/libamdhip64.so",
    symbol="hipInit",
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
                    site_dirs: Sequence[str]) -> list[tuple[str, str | None]]:
    """(source, folder) pairs to search after the explicit path, in order; folder None for a glob
    pattern that matches nothing (so the error can say it was tried)."""
    dirs = [("wheel", os.path.join(site_dir, sub)) for site_dir in site_dirs for sub in spec.wheel_subdirs]
    for var in spec.home_vars:
        home = environ.get(var)
        if home:
            dirs += [(var, os.path.join(home, sub)) for sub in spec.home_subdirs]
    for pattern in spec.glob_patterns:
        roots = sorted(glob.glob(pattern), key=_version_key, reverse=True)
        if not roots:
            dirs.append((pattern, None))
        dirs += [(pattern, os.path.join(root, sub)) for root in roots for sub in spec.home_subdirs]
    return dirs


def _try_load(path: str) -> str | None:
    """None if `path` loads as a shared library, else the loader's reason."""
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return str(exc).removeprefix(f"{path}: ")  # the caller names the path itself
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
        if folder is None:
            searched.append(f"{source}: no such folder")
            continue
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


class _NativeLib:
    """One loaded GPU-direct library: `path`, `source`, `version`, and its functions as lazy attributes.

    `lib.<function>` resolves the symbol on first use with its prototype from the ABI module; a
    function this build lacks raises `NotSupportedError` naming the version, never at load time.
    """

    spec: LibrarySpec
    header: str  # the C header the prototypes come from
    prototypes: dict[str, tuple[type | None, list[type]]]
    function_since: dict[str, int]
    upgrade_hint: str

    def __init__(self, path: str | os.PathLike[str], *, source: str = "explicit") -> None:
        self.path = os.fspath(path)
        self.source = source
        try:
            self._cdll = ctypes.CDLL(self.path, use_errno=True)
        except OSError as exc:
            raise LibraryNotFoundError(f"cannot load {self.spec.name} from {self.path}: {exc}. "
                                       f"Fix: {self.spec.install_hint}.", library=self.spec.name,
                                       searched=(f"{source}: {self.path}: {exc}",)) from None
        self.version = self._read_version()
        self.version_string = self._format_version(self.version)

    def _read_version(self) -> int:
        raise NotImplementedError

    @staticmethod
    def _format_version(version: int) -> str:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        """Whether this library exports `name`."""
        try:
            self._cdll[name]
        except AttributeError:
            return False
        return True

    def _missing(self, name: str) -> str:
        """Why `name` is absent and what to do, after "<name> is not supported by <lib> <version> at <path>"."""
        since = self.function_since.get(name)
        newer = f" (it first appears in {self.spec.name} {self._format_version(since)})" if since else ""
        return f"{newer}; {self.upgrade_hint}, or avoid this feature"

    def __getattr__(self, name: str) -> Any:
        prototype = self.prototypes.get(name)
        if prototype is None:
            raise AttributeError(f"{name!r} is not a function of {self.header}")
        try:
            fn = self._cdll[name]
        except AttributeError:
            raise NotSupportedError(f"{name} is not supported by {self.spec.name} {self.version_string} at "
                                    f"{self.path}{self._missing(name)}") from None
        fn.restype, fn.argtypes = prototype
        self.__dict__[name] = fn  # later lookups skip __getattr__
        return fn

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.version_string} at {self.path} (found via {self.source})>"


class CuFileLib(_NativeLib):
    """One loaded libcufile; `version` is cuFileGetVersion's integer (e.g. 1200).

    Construct one directly for a given file (tests do); `cufile()` shares one per process.
    """

    spec = CUFILE_SPEC
    header = "cufile.h"
    prototypes = abi.PROTOTYPES
    function_since = abi.FUNCTION_SINCE
    upgrade_hint = "install a newer nvidia-cufile wheel or CUDA toolkit"

    def _read_version(self) -> int:
        if not self.has("cuFileGetVersion"):
            return 0
        out = ctypes.c_int(0)
        status = self.cuFileGetVersion(ctypes.byref(out))
        return out.value if status.err == abi.CU_FILE_SUCCESS else 0

    @staticmethod
    def _format_version(version: int) -> str:
        return version_string(version)


def hipfile_version_string(version: int) -> str:
    """HipFileLib's version integer (10000*major + 100*minor + patch) as "major.minor.patch"."""
    if version <= 0:
        return "unknown"
    return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"


class HipFileLib(_NativeLib):
    """One loaded libhipfile; `version` is hipFileGetVersion's three numbers as 10000*major + 100*minor +
    patch (0.2.0 -> 200), also as `version_tuple`.

    Construct one directly for a given file (tests do); `hipfile()` shares one per process.
    """

    spec = HIPFILE_SPEC
    header = "hipfile.h"
    prototypes = hip_abi.PROTOTYPES
    function_since = hip_abi.FUNCTION_SINCE
    upgrade_hint = "install a newer hipFile (ROCm)"

    def _read_version(self) -> int:
        self.version_tuple = (0, 0, 0)
        if not self.has("hipFileGetVersion"):
            return 0
        parts = [ctypes.c_uint(0) for _ in range(3)]
        status = self.hipFileGetVersion(*(ctypes.byref(p) for p in parts))
        if status.err != hip_abi.hipFileSuccess:
            return 0
        self.version_tuple = tuple(p.value for p in parts)
        major, minor, patch = self.version_tuple
        return 10000 * major + 100 * minor + patch

    @staticmethod
    def _format_version(version: int) -> str:
        return hipfile_version_string(version)

    def _missing(self, name: str) -> str:
        replaced = hip_abi.LEGACY.get(name)
        if replaced:
            return f" ({name} was {replaced}); use the current name"
        return super()._missing(name)


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


_hip_instance: HipFileLib | None = None


def hipfile() -> HipFileLib:
    """The process-wide libhipfile, found with `find_library(HIPFILE_SPEC)` on first call.

    Loading it maps libamdhip64 (a dependency) but initialises nothing; the hipFile engine runs the
    HIP runtime guard before any call that could touch a GPU.
    """
    global _hip_instance
    if _hip_instance is None:
        with _instance_lock:
            if _hip_instance is None:
                found = find_library(HIPFILE_SPEC)
                lib = HipFileLib(found.path, source=found.source)
                logger.info("loaded libhipfile %s from %s (via %s)", lib.version_string, lib.path, lib.source)
                _hip_instance = lib
    return _hip_instance
