"""The plugin's settings: every spelling of every key, read from wherever LMCache leaves it.

LMCache 0.5.6 reads its own keys (`gds_path`, `gds_buffer_size`, `use_gds`, ...) from the YAML
file named by `LMCACHE_CONFIG_FILE` and from `LMCACHE_<KEY>` variables, but it drops keys it does
not know (`cufile_buffer_size` from the file with a warning, `LMCACHE_CUFILE_BUFFER_SIZE`
silently), and `LMCACHE_EXTRA_CONFIG` replaces the file's whole `extra_config`. So this module
reads the `LMCacheEngineConfig` *and* the file and the environment, validates every value once
into `PluginSettings`, and records where each value came from.

Where a key may be written, lowest precedence first:
  1. top level: `LMCACHE_<KEY>` in the environment, else the YAML file, else the config object
     (only LMCache's keys and the documented `cufile_buffer_size`);
  2. `extra_config.<key>` (the file's extra_config merged under LMCache's, so keys that
     `LMCACHE_EXTRA_CONFIG` hid are still honoured);
  3. `extra_config."storage_plugin.<name>.<key>"`, scoped to this plugin: wins over everything.
When two spellings of one setting are given (`use_cufile` / `use_gds`, `cufile_buffer_size` /
`gds_buffer_size`, `use_hipfile` / `gds_backend`), the one in the higher place wins, and at
the same place the documented spelling (`use_cufile`, `cufile_buffer_size`, `use_hipfile`)
wins; the choice is logged.

Also here, because it decides settings rather than moves data: the engine plan (file system
type of each path, from `pygds.fsinfo`, x the requested engine x the memory kind).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pygds
from pygds.cli.output import parse_size
from pygds.fsinfo import NO_GDS_FILE_SYSTEMS

from .layout import DATA_SUFFIX, WEKA_DATA_SUFFIX, parse_paths
from .options import CHECKSUM_MODES

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_NAME = "gds"
MODULE_PATH = "lmcache_plugin.backend"
CLASS_NAME = "GdsPluginBackend"

DEFAULT_BUFFER_MIB = 1024
SHARDINGS = ("by_gpu",)
GDS_LIBRARIES = ("cufile", "hipfile")
WEKA_FSTYPE = "wekafs"

# LMCache's defaults for the top-level keys read here (config.py of 0.5.6).
_LMCACHE_DEFAULTS: dict[str, Any] = {
    "gds_path": None,
    "gds_path_sharding": "by_gpu",
    "gds_buffer_size": None,
    "use_gds": True,
    "gds_backend": "cufile",
    "chunk_size": 256,
    "local_cpu": True,
    "max_local_cpu_size": 5.0,
    "enable_pd": False,
}
# Keys read at the top level: LMCache's own plus the documented one LMCache drops.
_TOP_LEVEL_KEYS = tuple(_LMCACHE_DEFAULTS) + ("cufile_buffer_size",)
_REGISTRATION_KEYS = ("module_path", "class_name")


class ConfigError(ValueError):
    """A bad setting; the message names the key, the value, where it was written and the fix.

    `source` (e.g. "environment LMCACHE_CHUNK_SIZE") is named in the message, so a bad value
    from a variable is found where it was set, not looked for in the YAML file.
    """

    def __init__(self, key: str, value: Any, problem: str, fix: str, source: str | None = None) -> None:
        self.key, self.value, self.problem, self.fix, self.source = key, value, problem, fix, source
        where = f" (from {source})" if source else ""
        super().__init__(f"gds plugin setting {key}={value!r}{where}: {problem}. Fix: {fix}")

    def at(self, source: str) -> "ConfigError":
        """The same error, naming where the value was written."""
        return ConfigError(self.key, self.value, self.problem, self.fix, source)


@dataclass(frozen=True)
class PluginSettings:
    """The validated settings of one plugin instance. Sizes in the unit their name says."""

    plugin_name: str = DEFAULT_PLUGIN_NAME
    paths: tuple[str, ...] = ()
    path_sharding: str = "by_gpu"
    device_id: int | None = None  # overrides the index of dst_device for path affinity
    buffer_size_mib: int = DEFAULT_BUFFER_MIB
    engine: str = "auto"  # requested: auto | cufile | hipfile | posix
    engine_explicit: bool = False  # the user asked for this engine (not a default)
    io_threads: int = 4
    direct_io: bool = False
    max_alloc_attempts: int = 10
    alloc_attempt_delay_s: float = 0.1
    capacity_bytes: int | None = None
    capacity_fraction: float | None = None
    tmp_max_age_s: float = 3600.0
    chunk_size: int = 256
    local_cpu: bool = True
    max_local_cpu_size_gb: float = 5.0
    builtin_gds_paths: tuple[str, ...] = ()  # where LMCache's own GdsBackend also runs
    # Whether entries carry an XXH3-64 checksum of their data and reads verify it: "auto" on
    # host-memory destinations only (cheap next to the I/O there), "once" as "auto" but each file
    # version once per process on local disk file systems, "always" on every read, GPU memory too
    # through a staging copy, "off" never.
    checksum: str = "auto"
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def buffer_size_bytes(self) -> int:
        return self.buffer_size_mib * 1024 * 1024

    def shared_with_builtin(self) -> list[str]:
        """Our paths that LMCache's built-in GdsBackend serves too (top-level `gds_path`)."""
        theirs = {_canonical(p) for p in self.builtin_gds_paths}
        return [p for p in self.paths if _canonical(p) in theirs]


# --------------------------------------------------------------------------------------------
# value parsers: each returns the parsed value or raises ConfigError naming key, value and fix


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    raise ConfigError(key, value, "not a boolean", f"write {key}: true or {key}: false")


def _int(key: str, value: Any, *, minimum: int | None = None, example: str = "4") -> int:
    parsed: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        parsed = value
    elif isinstance(value, float) and value.is_integer():
        parsed = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        parsed = int(value)
    if parsed is None:
        raise ConfigError(key, value, "not a whole number", f"write a whole number, e.g. {key}: {example}")
    if minimum is not None and parsed < minimum:
        raise ConfigError(key, value, f"must be at least {minimum}", f"write e.g. {key}: {example}")
    return parsed


def _float(key: str, value: Any, *, example: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        parsed = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, value, "not a number", f"write a number, e.g. {key}: {example}") from None
    if not math.isfinite(parsed) or parsed < 0:
        raise ConfigError(key, value, "must be a finite number >= 0", f"write e.g. {key}: {example}")
    return parsed


def _choice(key: str, value: Any, allowed: Sequence[str]) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in allowed:
        raise ConfigError(key, value, f"unknown value; allowed: {', '.join(allowed)}",
                          f"write one of {key}: {' | '.join(allowed)}")
    return text


def _paths(key: str, value: Any) -> tuple[str, ...]:
    """Absolute, `~`-expanded directories (`layout.parse_paths`), so the working directory of
    whoever opens the cache later cannot move it."""
    if not (isinstance(value, str) or
            (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))):
        raise ConfigError(key, value, "not a path or a comma-separated list of paths",
                          f'write e.g. {key}: "/mnt/nvme0/cache,/mnt/nvme1/cache"')
    paths = tuple(parse_paths(value))
    if not paths:
        raise ConfigError(key, value, "no path given (the list is empty)",
                          f'name at least one directory, e.g. {key}: "/mnt/gds/cache"')
    return paths


def _size(key: str, value: Any) -> int:
    """Bytes: a whole number, or a number with a binary unit (`pygds.cli.output.parse_size`)."""
    nbytes = 0
    if isinstance(value, int) and not isinstance(value, bool):
        nbytes = value
    elif isinstance(value, str):
        try:
            nbytes = parse_size(value)
        except ValueError:
            pass
    if nbytes <= 0:
        raise ConfigError(key, value, "not a positive size in bytes",
                          f"write bytes or a size with a unit, e.g. {key}: 500G")
    return nbytes


def _checksum(key: str, value: Any) -> str:
    """auto | once | always | off; YAML reads an unquoted `off` as false, which means "off" here too."""
    return "off" if value is False else _choice(key, value, CHECKSUM_MODES)


def _fraction(key: str, value: Any) -> float:
    parsed = _float(key, value, example="0.9")
    if not 0 < parsed <= 1:
        raise ConfigError(key, value, "must be a fraction in (0, 1]", f"write e.g. {key}: 0.9")
    return parsed


def _buffer_mib(key: str, value: Any) -> int:
    return _int(key, value, minimum=1, example="8192")


# setting field -> (spellings, best first at equal precedence; parser; default)
_SIMPLE: dict[str, tuple[tuple[str, ...], Callable[[str, Any], Any], Any]] = {
    "paths": (("gds_path",), _paths, ()),
    "path_sharding": (("gds_path_sharding",), lambda k, v: _choice(k, v, SHARDINGS), "by_gpu"),
    "buffer_size_mib": (("cufile_buffer_size", "gds_buffer_size"), _buffer_mib, DEFAULT_BUFFER_MIB),
    "io_threads": (("disk_io_threads",), lambda k, v: _int(k, v, minimum=0, example="4 (0 reads in the caller)"), 4),
    "direct_io": (("use_direct_io",), _bool, False),
    "max_alloc_attempts": (("max_alloc_attempts",), lambda k, v: _int(k, v, minimum=1, example="10"), 10),
    "alloc_attempt_delay_s": (("allocation_attempt_delay_secs",),
                              lambda k, v: _float(k, v, example="0.1"), 0.1),
    "capacity_bytes": (("gds_capacity_bytes",), _size, None),
    "capacity_fraction": (("gds_capacity_fraction",), _fraction, None),
    "tmp_max_age_s": (("tmp_max_age_secs",), lambda k, v: _float(k, v, example="3600"), 3600.0),
    "device_id": (("device_id",), lambda k, v: _int(k, v, minimum=0, example="0"), None),
    "chunk_size": (("chunk_size",), lambda k, v: _int(k, v, minimum=1, example="256"), 256),
    "local_cpu": (("local_cpu",), _bool, True),
    "max_local_cpu_size_gb": (("max_local_cpu_size",), lambda k, v: _float(k, v, example="5"), 5.0),
    "checksum": (("checksum",), _checksum, "auto"),
}
_ENGINE_KEYS = ("engine", "use_cufile", "use_gds", "use_hipfile", "gds_backend")
# Every key this plugin reads (the documentation's table lists the same).
KNOWN_KEYS: tuple[str, ...] = tuple(
    sorted({k for spellings, _, _ in _SIMPLE.values() for k in spellings} | set(_ENGINE_KEYS)))
# LMCache's own keys are for LMCache to read at its top level; scoping them to the plugin
# would be misleading.
_LMCACHE_ONLY = ("chunk_size", "local_cpu", "max_local_cpu_size")


# --------------------------------------------------------------------------------------------
# where values come from


@dataclass(frozen=True)
class _Found:
    key: str
    value: Any
    source: str
    rank: int  # 0 top level, 1 extra_config, 2 plugin-scoped


class _Layers:
    """Looks a key up in every place it may be written, highest precedence first."""

    def __init__(self, *, name: str, config: Any, yaml_doc: Mapping[str, Any], yaml_path: str | None,
                 environ: Mapping[str, str]) -> None:
        self.name = name
        self.config = config
        self.yaml = yaml_doc
        self.yaml_label = yaml_path or "the YAML file"
        self.environ = environ
        yaml_extra = yaml_doc.get("extra_config") if isinstance(yaml_doc.get("extra_config"), dict) else {}
        lm_extra = getattr(config, "extra_config", None) if config is not None else yaml_extra
        lm_extra = lm_extra if isinstance(lm_extra, dict) else {}
        self.lmcache_extra = dict(lm_extra)
        self.yaml_only_extra = {k: v for k, v in yaml_extra.items() if k not in lm_extra}
        self.extra = {**self.yaml_only_extra, **lm_extra}
        user_set = getattr(config, "_user_set_keys", None)
        self.user_set: set[str] = set(user_set) if user_set is not None else set()

    def _extra_label(self, key: str) -> str:
        if key in self.lmcache_extra:
            return f"extra_config[{key!r}]"
        return f"extra_config[{key!r}] in {self.yaml_label} (hidden from LMCache by LMCACHE_EXTRA_CONFIG)"

    def find(self, key: str) -> _Found | None:
        if key not in _LMCACHE_ONLY:  # LMCache's own keys live at its top level only
            scoped = f"storage_plugin.{self.name}.{key}"
            if scoped in self.extra:
                return _Found(key, self.extra[scoped], self._extra_label(scoped), 2)
            if key in self.extra:
                return _Found(key, self.extra[key], self._extra_label(key), 1)
        if key not in _TOP_LEVEL_KEYS:
            return None
        env = f"LMCACHE_{key.upper()}"
        if env in self.environ:
            return _Found(key, _unquote(self.environ[env]), f"environment {env}", 0)
        if key in self.yaml:
            return _Found(key, self.yaml[key], f"{key} in {self.yaml_label}", 0)
        if self.config is not None and hasattr(self.config, key):
            value = getattr(self.config, key)
            if key in self.user_set or value != _LMCACHE_DEFAULTS.get(key):
                return _Found(key, value, f"LMCacheEngineConfig.{key}", 0)
        return None

    def lmcache_value(self, key: str) -> Any:
        """The value LMCache itself uses for one of its top-level keys."""
        if self.config is not None and hasattr(self.config, key):
            return getattr(self.config, key)
        found = self.find(key)
        return found.value if found is not None and found.rank == 0 else _LMCACHE_DEFAULTS.get(key)


def _unquote(text: str) -> str:
    """LMCache strips one pair of matching quotes around environment values; so do we."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _parsed(found: _Found, parse: Callable[[str, Any], Any]) -> Any:
    """`parse(key, value)`; a ConfigError names where the value was written."""
    try:
        return parse(found.key, found.value)
    except ConfigError as exc:
        raise exc.at(found.source) from None


def _pick(layers: _Layers, field_name: str, spellings: Sequence[str], notes: list[tuple[int, str]]
          ) -> _Found | None:
    found = [f for f in (layers.find(k) for k in spellings) if f is not None]
    if not found:
        return None
    winner = max(found, key=lambda f: f.rank)  # max keeps the first (documented) spelling on ties
    for other in found:
        if other is winner:
            continue
        level = logging.WARNING if str(other.value) != str(winner.value) else logging.INFO
        notes.append((level, f"{field_name}: {winner.key}={winner.value!r} ({winner.source}) wins over "
                             f"{other.key}={other.value!r} ({other.source})"))
    return winner


def _resolve_engine(layers: _Layers, settings: dict[str, Any], sources: dict[str, str],
                    notes: list[tuple[int, str]]) -> None:
    """engine / use_cufile+use_gds (on/off) / use_hipfile+gds_backend (which library)."""
    engine = layers.find("engine")
    switch = _pick(layers, "GDS on/off", ("use_cufile", "use_gds"), notes)
    library = _pick(layers, "GDS library", ("use_hipfile", "gds_backend"), notes)
    on = _parsed(switch, _bool) if switch is not None else True
    lib = "cufile"
    if library is not None:
        if library.key == "use_hipfile":
            lib = "hipfile" if _parsed(library, _bool) else "cufile"
        else:
            lib = _parsed(library, lambda k, v: _choice(k, v, GDS_LIBRARIES))
    if engine is not None:
        requested = _parsed(engine, lambda k, v: _choice(k, v, pygds.ENGINES))
        settings["engine"], settings["engine_explicit"] = requested, requested != "auto"
        sources["engine"] = engine.source
        for other in (switch, library):
            if other is not None:
                notes.append((logging.INFO, f"engine={requested!r} ({engine.source}) wins over "
                                            f"{other.key}={other.value!r} ({other.source})"))
        return
    if not on:
        settings["engine"], settings["engine_explicit"] = "posix", True
        sources["engine"] = f"{switch.key}={switch.value!r} ({switch.source})"
    elif lib == "hipfile":
        settings["engine"], settings["engine_explicit"] = "hipfile", True
        sources["engine"] = f"{library.key}={library.value!r} ({library.source})"
    elif switch is not None:  # found only where the user wrote it: cuFile asked for explicitly
        settings["engine"], settings["engine_explicit"] = "cufile", True
        sources["engine"] = f"{switch.key}={switch.value!r} ({switch.source})"
    else:
        settings["engine"], settings["engine_explicit"] = "auto", False
        sources["engine"] = "default"


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ConfigError("LMCACHE_CONFIG_FILE", str(path), "the file does not hold a mapping of keys",
                          "write the configuration as `key: value` lines")
    return doc


def _plugin_name(config_like: Any, extra: Any) -> str:
    """The name this plugin is registered under (the one whose module_path is ours)."""
    extra = extra if isinstance(extra, dict) else {}
    names = list(getattr(config_like, "storage_plugins", None) or [])
    ours = [n for n in names if extra.get(f"storage_plugin.{n}.module_path") == MODULE_PATH]
    if ours:
        return ours[0]
    return DEFAULT_PLUGIN_NAME if DEFAULT_PLUGIN_NAME in names or not names else names[0]


def _build(layers: _Layers, errors: list[ConfigError], notes: list[tuple[int, str]]) -> PluginSettings:
    """Validate every key; collect errors (a bad key keeps its default so the others are checked)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    extra_error = _extra_config_variable_error(layers.environ)
    if extra_error is not None:
        errors.append(extra_error)
    for field_name, (spellings, parse, default) in _SIMPLE.items():
        found = _pick(layers, field_name, spellings, notes)
        if found is None:
            values[field_name], sources[field_name] = default, "default"
            continue
        try:
            values[field_name] = _parsed(found, parse)
            sources[field_name] = found.source
        except ConfigError as exc:
            errors.append(exc)
            values[field_name], sources[field_name] = default, "default (bad value given)"
            continue
        if field_name == "paths":
            notes += [(logging.WARNING, message) for message in _relative_path_warnings(found)]
    try:
        _resolve_engine(layers, values, sources, notes)
    except ConfigError as exc:
        errors.append(exc)
    if not values["paths"] and sources["paths"] == "default":
        errors.append(ConfigError(
            "gds_path", None, "no cache directory is configured",
            f'set extra_config "storage_plugin.{layers.name}.gds_path" (recommended; LMCache\'s '
            'built-in GdsBackend then stays off) or gds_path / LMCACHE_GDS_PATH'))
    if values["max_local_cpu_size_gb"] <= 0 and not layers.lmcache_value("enable_pd"):
        errors.append(ConfigError(
            "max_local_cpu_size", values["max_local_cpu_size_gb"],
            "LMCache needs its CPU backend as the staging allocator of every storage backend, "
            "also with local_cpu: false, and creates it only when max_local_cpu_size > 0",
            "set max_local_cpu_size to a positive size in GB, e.g. max_local_cpu_size: 5",
            None if sources["max_local_cpu_size_gb"] == "default" else sources["max_local_cpu_size_gb"]))
    for key in layers.extra:
        prefix = f"storage_plugin.{layers.name}."
        if key.startswith(prefix):
            sub = key[len(prefix):]
            if sub in _LMCACHE_ONLY or (sub not in KNOWN_KEYS and sub not in _REGISTRATION_KEYS):
                notes.append((logging.WARNING, f"extra_config[{key!r}] is not a setting of the gds plugin "
                                               f"and is ignored; known: {', '.join(KNOWN_KEYS)}"))
    builtin = layers.lmcache_value("gds_path")
    builtin_paths = tuple(parse_paths(builtin if isinstance(builtin, (list, tuple)) else str(builtin))) \
        if builtin else ()
    values.update(plugin_name=layers.name, builtin_gds_paths=builtin_paths, sources=sources)
    settings = PluginSettings(**values)
    shared = settings.shared_with_builtin()
    if shared:
        notes.append((logging.WARNING, (
            f"LMCache's built-in GdsBackend also runs on {', '.join(shared)} because the top-level "
            f"gds_path is set: both backends write and scan the same entries. Move the path to "
            f"extra_config \"storage_plugin.{layers.name}.gds_path\" (and unset gds_path / "
            f"LMCACHE_GDS_PATH) so only this plugin serves it")))
    elif builtin_paths:
        notes.append((logging.INFO, f"LMCache's built-in GdsBackend also runs on {builtin} "
                                    "(top-level gds_path); this plugin serves other paths"))
    hidden = sorted(k for k in layers.yaml_only_extra)
    if hidden:
        notes.append((logging.WARNING, (
            f"LMCACHE_EXTRA_CONFIG replaced the extra_config of {layers.yaml_label}, so LMCache no longer "
            f"sees {', '.join(hidden)}; the gds plugin still reads its own keys there. Put every "
            "extra_config key into LMCACHE_EXTRA_CONFIG, or none")))
    return settings


def _relative_path_warnings(found: _Found) -> list[str]:
    """One warning per gds_path entry written relative to the working directory.

    The split mirrors `layout.parse_paths`, which resolves the entries and cannot say afterwards
    which of them were relative.
    """
    items = found.value.split(",") if isinstance(found.value, str) else found.value
    relative = [i.strip() for i in items if i.strip() and not os.path.isabs(os.path.expanduser(i.strip()))]
    warnings = []
    for entry in relative:
        [resolved] = parse_paths([entry])
        warnings.append(str(ConfigError(
            found.key, entry, f"a relative path is resolved against the current directory, here to {resolved}; "
                              "a process started in another directory would use another cache",
            f"write the absolute path, e.g. {found.key}: {resolved}", found.source)))
    return warnings


def _extra_config_variable_error(environ: Mapping[str, str]) -> ConfigError | None:
    """LMCACHE_EXTRA_CONFIG that is not a JSON object: LMCache ignores it with only a warning."""
    text = environ.get("LMCACHE_EXTRA_CONFIG")
    if not text or not _unquote(text):
        return None
    fix = ("write one JSON object, e.g. LMCACHE_EXTRA_CONFIG='{\"storage_plugin.gds.gds_path\": "
           "\"/mnt/gds/cache\"}', or unset the variable")
    try:
        value = json.loads(_unquote(text))
    except json.JSONDecodeError as exc:
        return ConfigError("LMCACHE_EXTRA_CONFIG", text,
                           f"the environment variable is not valid JSON ({exc.msg} at line {exc.lineno} column "
                           f"{exc.colno}, character {exc.pos}), so LMCache ignores it with a warning", fix)
    if not isinstance(value, dict):
        return ConfigError("LMCACHE_EXTRA_CONFIG", text,
                           "the environment variable is JSON but not an object of keys, which LMCache fails on", fix)
    return None


def load_settings(config: Any, *, plugin_name: str | None = None,
                  environ: Mapping[str, str] = os.environ, create_dirs: bool = True) -> PluginSettings:
    """Read and validate the plugin's settings from an `LMCacheEngineConfig` plus what LMCache drops.

    `environ` supplies `LMCACHE_CONFIG_FILE` (the YAML file is read again for the keys LMCache
    dropped) and the `LMCACHE_*` variables. With `config=None` (tools working without LMCache),
    the file and the variables are layered as LMCache 0.5.6 would layer them. With `create_dirs`, every path is created and
    proved writable, as the documentation promises. Raises `ConfigError` for the first bad value;
    logs the choices and warnings made on the way.
    """
    yaml_path = environ.get("LMCACHE_CONFIG_FILE")
    yaml_doc: dict[str, Any] = {}
    if yaml_path:
        try:
            yaml_doc = _read_yaml(yaml_path)
        except OSError as exc:
            log.warning("cannot read LMCACHE_CONFIG_FILE=%s again (%s); using the LMCache config only",
                        yaml_path, exc)
    if config is None:
        config = _LMCacheView(yaml_doc, environ)
    extra = getattr(config, "extra_config", None) or {}
    name = plugin_name or _plugin_name(config, extra)
    layers = _Layers(name=name, config=config, yaml_doc=yaml_doc, yaml_path=yaml_path, environ=environ)
    errors: list[ConfigError] = []
    notes: list[tuple[int, str]] = []
    settings = _build(layers, errors, notes)
    if errors:
        raise errors[0]
    for level, message in notes:
        log.log(level, "%s", message)
    if create_dirs:
        prepare_paths(settings.paths, source=settings.sources.get("paths"))
    log.debug("gds plugin settings: %s", settings)
    return settings


def prepare_paths(paths: Sequence[str], source: str | None = None) -> None:
    """Create every directory and prove it writable with a probe file; ConfigError otherwise
    (naming `source`, where the paths were written)."""
    for path in paths:
        probe = os.path.join(path, f".pygds-probe-{os.getpid()}")
        try:
            os.makedirs(path, exist_ok=True)
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError("gds_path", path, f"the directory cannot be created or written "
                                                f"({exc.strerror or exc})",
                              "create it and give this process write permission, or pick "
                              "another directory", source) from None


def check_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
                 notes: list[str] | None = None) -> list[str]:
    """Problems with a YAML configuration file, as messages (empty when it is fine).

    It creates nothing and logs nothing; it imports the registered `module_path`, as LMCache
    would, to prove the class is there. With `environ`, the `LMCACHE_*` variables are
    layered over the file the way LMCache does (an `LMCACHE_EXTRA_CONFIG` replaces the file's
    extra_config, which can drop this plugin's registration). What could not be checked, and
    why, is appended to `notes`.
    """
    environ = dict(environ or {})
    try:
        doc = _read_yaml(path)
    except (OSError, ValueError) as exc:
        return [f"cannot read {path}: {exc}"]
    except Exception as exc:  # yaml.YAMLError and friends
        return [f"{path} is not valid YAML: {exc}"]
    effective = _LMCacheView(doc, environ)
    problems: list[str] = []
    name = _plugin_name(effective, effective.extra_config or {})
    problems += _registration_problems(effective, name, str(path), environ, notes if notes is not None else [])
    layers = _Layers(name=name, config=effective, yaml_doc=doc, yaml_path=str(path), environ=environ)
    errors: list[ConfigError] = []
    logged: list[tuple[int, str]] = []
    settings = _build(layers, errors, logged)
    problems += [str(e) for e in errors]
    problems += [message for level, message in logged if level >= logging.WARNING]
    if not any(e.key == "gds_path" for e in errors):
        for p in settings.paths:
            problem = _path_problem(p)
            if problem:
                problems.append(str(ConfigError("gds_path", p, problem, "create it or pick a writable directory",
                                                settings.sources["paths"])))
    return problems


class _LMCacheView:
    """What LMCache 0.5.6 would make of a YAML file plus environment, for `check_config`."""

    def __init__(self, doc: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self._user_set_keys: set[str] = set()
        for key, default in _LMCACHE_DEFAULTS.items():
            setattr(self, key, doc.get(key, default))
            if key in doc:
                self._user_set_keys.add(key)
        for key in _LMCACHE_DEFAULTS:
            env = f"LMCACHE_{key.upper()}"
            if env in environ:
                setattr(self, key, _unquote(environ[env]))
                self._user_set_keys.add(key)
        if isinstance(self.enable_pd, str):
            self.enable_pd = self.enable_pd.strip().lower() in ("true", "1")
        self.storage_plugins = doc.get("storage_plugins") or doc.get("external_backends")
        if "LMCACHE_STORAGE_PLUGINS" in environ:
            self.storage_plugins = [p.strip() for p in environ["LMCACHE_STORAGE_PLUGINS"].split(",") if p.strip()]
        self.extra_config = doc.get("extra_config")
        if "LMCACHE_EXTRA_CONFIG" in environ:
            # Not a JSON object: `_extra_config_variable_error` reports it (LMCache keeps the file's
            # extra_config for invalid JSON and fails on other JSON), so judge the rest by the file.
            try:
                value = json.loads(_unquote(environ["LMCACHE_EXTRA_CONFIG"]) or "null")
            except json.JSONDecodeError:
                value = self.extra_config
            if value is None or isinstance(value, dict):
                self.extra_config = value


def _registration_problems(view: _LMCacheView, name: str, path: str, environ: Mapping[str, str],
                           notes: list[str]) -> list[str]:
    plugins = view.storage_plugins
    extra = view.extra_config if isinstance(view.extra_config, dict) else {}
    if isinstance(plugins, str):
        plugins = [p.strip() for p in plugins.split(",") if p.strip()]
    registration = (f'"storage_plugin.{name}.module_path": "{MODULE_PATH}", '
                    f'"storage_plugin.{name}.class_name": "{CLASS_NAME}"')
    if not plugins or name not in plugins:
        return [f"storage_plugins does not list {name!r}, so LMCache will not load the gds plugin. "
                f"Fix: add `storage_plugins: [{name}]` (or LMCACHE_STORAGE_PLUGINS={name})"]
    missing = [k for k in _REGISTRATION_KEYS if not extra.get(f"storage_plugin.{name}.{k}")]
    if not missing:
        return _backend_class_problems(extra, name, notes)
    if "LMCACHE_EXTRA_CONFIG" in environ:
        return [f"LMCACHE_EXTRA_CONFIG replaces the whole extra_config of {path} (LMCache 0.5.6 does not "
                f"merge them), so the plugin's registration ({', '.join(missing)}) is gone and LMCache "
                f"will not load it. Fix: include {registration} in LMCACHE_EXTRA_CONFIG, or move its "
                "other keys into the file and unset it"]
    return [f"extra_config lacks storage_plugin.{name}.{' / '.join(missing)}, so LMCache will not load "
            f"the gds plugin. Fix: add {registration} to extra_config"]


def _backend_class_problems(extra: Mapping[str, Any], name: str, notes: list[str]) -> list[str]:
    """Whether the registered module imports and names an LMCache storage backend class."""
    module_key, class_key = (f"storage_plugin.{name}.{k}" for k in _REGISTRATION_KEYS)
    module_path, class_name = extra[module_key], extra[class_key]
    fix = f"write {module_key}: {MODULE_PATH} and {class_key}: {CLASS_NAME}"
    try:
        from lmcache.v1.storage_backend.abstract_backend import StorageBackendInterface
    except ImportError as exc:
        notes.append(f"{module_key}={module_path!r} and {class_key}={class_name!r} were not checked: lmcache "
                     f"cannot be imported here ({exc}); install it (pip install 'pygds[lmcache]') to check them")
        return []
    try:
        module = importlib.import_module(str(module_path))
    except Exception as exc:  # ImportError, or whatever the module's own code raised while loading
        return [str(ConfigError(module_key, module_path, f"LMCache cannot import it ({type(exc).__name__}: {exc}), "
                                                         "so it will not load the gds plugin", fix))]
    cls = getattr(module, str(class_name), None)
    if cls is None:
        return [str(ConfigError(class_key, class_name, f"module {module_path} has no such class, so LMCache will "
                                                       "not load the gds plugin", fix))]
    if not (isinstance(cls, type) and issubclass(cls, StorageBackendInterface)):
        return [str(ConfigError(class_key, class_name, f"{module_path}.{class_name} is not an LMCache storage "
                                                       "backend (a subclass of StorageBackendInterface)", fix))]
    return []


def _path_problem(path: str) -> str | None:
    """Why `path` could not be created and written, without creating anything."""
    probe = os.path.abspath(path)
    if os.path.exists(probe):
        if not os.path.isdir(probe):
            return "exists and is not a directory"
        return None if os.access(probe, os.W_OK | os.X_OK) else "the directory is not writable"
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{probe} is not a directory, so it cannot be created"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"it cannot be created: {probe} is not writable"
    return None


# --------------------------------------------------------------------------------------------
# the engine plan (the file system types come from `pygds.fsinfo`)


def _canonical(path: str) -> str:
    """The real directory of a path from `parse_paths` (already absolute and expanded)."""
    return os.path.realpath(path)


_HOST_MEMORY = "host memory (a CPU destination, or no CUDA): POSIX I/O"


@dataclass(frozen=True)
class EnginePlan:
    """What the backend runs on: the pygds engine, the data file suffix, and why."""

    engine: str  # "posix" | "cufile" | "hipfile" | "auto" (pygds decides, falling back to posix)
    data_suffix: str
    reason: str
    warnings: tuple[str, ...] = ()


def plan_engine(settings: PluginSettings, fstypes: Mapping[str, str], device_memory: bool) -> EnginePlan:
    """Choose the engine from the request, the file systems of the paths and the memory kind.

    Weka (`wekafs`) needs cuFile and LMCache's `.weka1` names on every path; tmpfs, ramfs and
    overlay cannot do GPU-direct I/O, so POSIX is used there unless cuFile was asked for
    explicitly (then a warning); host memory (a CPU destination) always uses POSIX.
    """
    weka = sorted(p for p, t in fstypes.items() if t == WEKA_FSTYPE)
    source = settings.sources.get("engine", "default")
    if weka and len(weka) != len(fstypes):
        others = sorted(set(fstypes) - set(weka))
        raise ConfigError("gds_path", ",".join(settings.paths),
                          f"{', '.join(weka)} on wekafs but {', '.join(others)} not: Weka entries are named "
                          "*.weka1 and other entries *.kvcache.safetensors, so the caches would not see "
                          "each other", "put all paths on Weka, or none", settings.sources.get("paths"))
    if weka:
        if settings.engine in ("posix", "hipfile"):
            raise ConfigError("engine", settings.engine,
                              f"{', '.join(weka)} is on wekafs, where LMCache's GdsBackend enforces cuFile "
                              f"(the engine was set by {source})",
                              "remove use_cufile: false / use_gds: false / engine: posix for Weka paths")
        if not device_memory:
            return EnginePlan("posix", WEKA_DATA_SUFFIX, f"wekafs, but {_HOST_MEMORY}")
        return EnginePlan("cufile", WEKA_DATA_SUFFIX, "wekafs: cuFile is enforced")
    if not device_memory:
        return EnginePlan("posix", DATA_SUFFIX, _HOST_MEMORY)
    no_gds = sorted(f"{p} ({t})" for p, t in fstypes.items() if t in NO_GDS_FILE_SYSTEMS)
    if no_gds and settings.engine != "posix":
        if settings.engine_explicit:
            return EnginePlan(settings.engine, DATA_SUFFIX, f"{settings.engine} asked for ({source})",
                              (f"{', '.join(no_gds)} cannot do GPU-direct I/O; using {settings.engine} "
                               f"anyway because it was asked for explicitly ({source})",))
        return EnginePlan("posix", DATA_SUFFIX, f"{', '.join(no_gds)} cannot do GPU-direct I/O")
    return EnginePlan(settings.engine, DATA_SUFFIX, f"engine {settings.engine} ({source})")
