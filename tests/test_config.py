"""Settings of the gds plugin: every key, every spelling and place, bad values, check_config,
the mount lookup and the engine plan — against LMCache 0.5.6's real config loader."""

from __future__ import annotations

import json
import logging
import os

import pytest
import yaml

from lmcache_plugin.config import (
    DEFAULT_BUFFER_MIB,
    KNOWN_KEYS,
    ConfigError,
    PluginSettings,
    check_config,
    load_settings,
    plan_engine,
    prepare_paths,
)
from lmcache_env import config_from_env, make_config, plugin_extra, registration

P = "storage_plugin.gds."


def settings_of(config, environ=None, **kw) -> PluginSettings:
    return load_settings(config, environ=environ or {}, create_dirs=False, **kw)


def with_paths(**extra):
    """A config whose paths are set (scoped) plus the given unscoped extra_config keys."""
    return make_config(extra_config={**plugin_extra("/cache"), **extra})


# ---------------------------------------------------------------------------------------------
# every key: a good value in extra_config, scoped, and (where it exists) at the top level

GOOD = [
    # key, written value, settings field, parsed value
    ("gds_path", " /a, /b ,, ", "paths", ("/a", "/b")),
    ("gds_path", ["/a", " /b"], "paths", ("/a", "/b")),
    ("gds_path_sharding", "by_gpu", "path_sharding", "by_gpu"),
    ("cufile_buffer_size", "8192", "buffer_size_mib", 8192),
    ("gds_buffer_size", 4096, "buffer_size_mib", 4096),
    ("disk_io_threads", 0, "io_threads", 0),
    ("disk_io_threads", "8", "io_threads", 8),
    ("use_direct_io", "true", "direct_io", True),
    ("use_direct_io", False, "direct_io", False),
    ("max_alloc_attempts", 3, "max_alloc_attempts", 3),
    ("allocation_attempt_delay_secs", "0.5", "alloc_attempt_delay_s", 0.5),
    ("gds_capacity_bytes", "2G", "capacity_bytes", 2 << 30),
    ("gds_capacity_bytes", "1.5TiB", "capacity_bytes", 3 << 39),
    ("gds_capacity_bytes", 1000, "capacity_bytes", 1000),
    ("gds_capacity_fraction", 0.5, "capacity_fraction", 0.5),
    ("tmp_max_age_secs", 60, "tmp_max_age_s", 60.0),
    ("device_id", 3, "device_id", 3),
    ("engine", "POSIX", "engine", "posix"),
    ("use_cufile", False, "engine", "posix"),
    ("use_cufile", "true", "engine", "cufile"),
    ("use_hipfile", True, "engine", "hipfile"),
    ("use_gds", "false", "engine", "posix"),
    ("gds_backend", "hipfile", "engine", "hipfile"),
    ("checksum", "ALWAYS", "checksum", "always"),
    ("checksum", "off", "checksum", "off"),
    ("checksum", False, "checksum", "off"),  # YAML reads an unquoted off as false
]

BAD = [
    # key, bad value, words the message must hold (besides key, value and "Fix:")
    ("gds_path", " , ", "empty"),
    ("gds_path", 5, "comma-separated"),
    ("gds_path_sharding", "by_rank", "by_gpu"),
    ("cufile_buffer_size", "abc", "whole number"),
    ("cufile_buffer_size", -1, "at least 1"),
    ("cufile_buffer_size", "8G", "whole number"),
    ("gds_buffer_size", 0, "at least 1"),
    ("disk_io_threads", "many", "whole number"),
    ("disk_io_threads", 1.5, "whole number"),
    ("disk_io_threads", -1, "at least 0"),
    ("use_direct_io", "yes", "boolean"),
    ("use_direct_io", 2, "boolean"),
    ("max_alloc_attempts", 0, "at least 1"),
    ("allocation_attempt_delay_secs", -1, ">= 0"),
    ("allocation_attempt_delay_secs", "soon", "not a number"),
    ("gds_capacity_bytes", "lots", "size"),
    ("gds_capacity_bytes", -1, "size"),
    ("gds_capacity_fraction", 1.5, "fraction"),
    ("gds_capacity_fraction", 0, "fraction"),
    ("tmp_max_age_secs", -1, ">= 0"),
    ("device_id", -1, "at least 0"),
    ("device_id", "gpu0", "whole number"),
    ("engine", "nvme", "auto, cufile, hipfile, posix"),
    ("use_cufile", "maybe", "boolean"),
    ("use_hipfile", "y", "boolean"),
    ("use_gds", "yes", "boolean"),
    ("gds_backend", "rocm", "cufile, hipfile"),
    ("checksum", "sometimes", "auto, once, always, off"),
    ("checksum", True, "auto, once, always, off"),
]


def test_tables_cover_every_key():
    plugin_keys = set(KNOWN_KEYS) - {"chunk_size", "local_cpu", "max_local_cpu_size"}
    assert {k for k, *_ in GOOD} == plugin_keys
    assert {k for k, *_ in BAD} == plugin_keys


@pytest.mark.parametrize("place", ["extra", "scoped"])
@pytest.mark.parametrize("key,value,field,expected", GOOD)
def test_good_value_in_extra_config(place, key, value, field, expected):
    written = {(P + key if place == "scoped" else key): value}
    base = plugin_extra("/cache") if key != "gds_path" else registration()
    settings = settings_of(make_config(extra_config={**base, **written}))
    assert getattr(settings, field) == expected
    assert (P + key if place == "scoped" else key) in settings.sources[field]


TOP_LEVEL = {"gds_path", "gds_path_sharding", "gds_buffer_size", "use_gds", "gds_backend", "cufile_buffer_size"}
BAD_PLACES = [(place, *case) for case in BAD for place in ("extra", "scoped", "top")
              # at the top level values are environment text, where any text is a path name
              if place != "top" or (case[0] in TOP_LEVEL and (case[0] != "gds_path" or isinstance(case[1], str)))]


@pytest.mark.parametrize("place,key,value,words", BAD_PLACES)
def test_bad_value_names_key_value_and_fix(place, key, value, words):
    environ: dict[str, str] = {}
    extra = plugin_extra("/cache") if key != "gds_path" else registration()
    if place == "top":
        # LMCache converts or drops top-level values; the raw text is read from the environment
        environ[f"LMCACHE_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    else:
        extra[P + key if place == "scoped" else key] = value
    with pytest.raises(ConfigError) as err:
        settings_of(make_config(extra_config=extra), environ)
    message = str(err.value)
    assert err.value.key == key
    assert key in message and "Fix:" in message and words in message
    shown = repr(value.strip() if place == "top" and isinstance(value, str) else value)
    assert shown in message
    # where the value was written: the variable, or the extra_config key
    assert (f"environment LMCACHE_{key.upper()}" if place == "top" else
            f"extra_config[{(P + key if place == 'scoped' else key)!r}]") in message


@pytest.mark.parametrize("env,value,words", [
    ("LMCACHE_CHUNK_SIZE", "abc", "whole number"),
    ("LMCACHE_LOCAL_CPU", "nope", "boolean"),
    ("LMCACHE_MAX_LOCAL_CPU_SIZE", "many", "not a number"),
])
def test_bad_lmcache_keys_that_lmcache_itself_ignores(env, value, words):
    # LMCache logs "Failed to parse" and keeps its default; the plugin refuses to start on them.
    config = config_from_env({env: value, "LMCACHE_STORAGE_PLUGINS": "gds",
                              "LMCACHE_EXTRA_CONFIG": json.dumps(plugin_extra("/cache"))})
    with pytest.raises(ConfigError, match=words) as err:
        settings_of(config, {env: value})
    assert env.removeprefix("LMCACHE_").lower() in str(err.value)
    assert f"from environment {env}" in str(err.value) and repr(value) in str(err.value)


def test_max_local_cpu_size_zero_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as err:
        settings_of(make_config(extra_config=plugin_extra("/cache"), max_local_cpu_size=0))
    assert err.value.key == "max_local_cpu_size"
    assert "staging allocator" in str(err.value) and "local_cpu: false" in str(err.value)


def test_no_path_at_all_says_where_to_put_one():
    with pytest.raises(ConfigError) as err:
        settings_of(make_config(extra_config=registration()))
    assert err.value.key == "gds_path" and P + "gds_path" in str(err.value)


def test_defaults():
    s = settings_of(with_paths())
    assert (s.path_sharding, s.buffer_size_mib, s.engine, s.engine_explicit, s.io_threads, s.direct_io,
            s.max_alloc_attempts, s.alloc_attempt_delay_s, s.capacity_bytes, s.capacity_fraction,
            s.tmp_max_age_s, s.device_id, s.checksum) == ("by_gpu", DEFAULT_BUFFER_MIB, "auto", False, 4, False,
                                                           10, 0.1, None, None, 3600.0, None, "auto")
    assert s.sources["engine"] == "default" and s.sources["buffer_size_mib"] == "default"


def test_lmcache_own_keys_are_read_from_the_config():
    s = settings_of(make_config(extra_config=plugin_extra("/cache"), chunk_size=512, local_cpu=True,
                                max_local_cpu_size=2.5))
    assert (s.chunk_size, s.local_cpu, s.max_local_cpu_size_gb) == (512, True, 2.5)


# ---------------------------------------------------------------------------------------------
# precedence between places and between the two families


def test_scoped_beats_extra_beats_top_level():
    config = make_config(gds_path="/top", extra_config={**registration(), "gds_path": "/extra",
                                                        P + "gds_path": "/scoped"})
    assert settings_of(config).paths == ("/scoped",)
    config = make_config(gds_path="/top", extra_config={**registration(), "gds_path": "/extra"})
    assert settings_of(config).paths == ("/extra",)
    assert settings_of(make_config(gds_path="/top", extra_config=registration())).paths == ("/top",)


def test_buffer_size_families_documented_name_wins_and_is_logged(caplog):
    caplog.set_level(logging.INFO, "lmcache_plugin")
    config = make_config(gds_buffer_size=4096, extra_config=plugin_extra("/cache"))
    s = settings_of(config, {"LMCACHE_CUFILE_BUFFER_SIZE": "8192", "LMCACHE_GDS_BUFFER_SIZE": "4096"})
    assert s.buffer_size_mib == 8192 and s.sources["buffer_size_mib"] == "environment LMCACHE_CUFILE_BUFFER_SIZE"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cufile_buffer_size=" in m and "wins over gds_buffer_size=" in m for m in warning)
    # scoped beats both top-level spellings
    config = make_config(extra_config={**plugin_extra("/cache"), P + "gds_buffer_size": 2048})
    assert settings_of(config, {"LMCACHE_CUFILE_BUFFER_SIZE": "8192"}).buffer_size_mib == 2048


def test_gds_switch_families(caplog):
    caplog.set_level(logging.INFO, "lmcache_plugin")
    s = settings_of(with_paths(use_cufile=False, use_gds=True))
    assert s.engine == "posix" and s.engine_explicit
    assert any("use_cufile=False" in r.getMessage() and "wins over use_gds=True" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    # LMCache's use_gds, written explicitly, asks for cuFile explicitly (as LMCache treats it)
    s = settings_of(make_config(use_gds=True, extra_config=plugin_extra("/cache")))
    assert (s.engine, s.engine_explicit) == ("cufile", True)
    # its default does not
    assert settings_of(with_paths()).engine_explicit is False


@pytest.mark.parametrize("text,engine", [("true", "cufile"), ("1", "cufile"), ("TRUE", "cufile"),
                                         ("false", "posix"), ("0", "posix")])
def test_lmcache_use_gds_variable(text, engine):
    env = {"LMCACHE_USE_GDS": text, "LMCACHE_STORAGE_PLUGINS": "gds",
           "LMCACHE_EXTRA_CONFIG": json.dumps(plugin_extra("/cache"))}
    s = settings_of(config_from_env(env), env)
    assert (s.engine, s.engine_explicit, s.sources["engine"]) == (
        engine, True, f"use_gds={text!r} (environment LMCACHE_USE_GDS)")


def test_library_families_and_engine_key():
    # use_hipfile: false only says "not hipFile": the default cuFile-or-POSIX choice remains
    assert settings_of(with_paths(use_hipfile=False, gds_backend="hipfile")).engine == "auto"
    assert settings_of(make_config(gds_backend="hipfile", extra_config=plugin_extra("/cache"))).engine == "hipfile"
    s = settings_of(with_paths(engine="posix", use_cufile=True))
    assert s.engine == "posix" and "extra_config['engine']" in s.sources["engine"]
    # use_cufile: false turns GDS off whatever library is named
    assert settings_of(with_paths(use_hipfile=True, use_cufile=False)).engine == "posix"


def test_unknown_scoped_key_is_reported(caplog):
    caplog.set_level(logging.INFO, "lmcache_plugin")
    settings_of(make_config(extra_config={**plugin_extra("/cache"), P + "gds_pth": "/typo"}))
    assert any("gds_pth" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_plugin_name_is_found_from_the_registration():
    extra = {**plugin_extra("/fast", name="nvme"), "storage_plugin.other.gds_path": "/other"}
    s = settings_of(make_config(extra_config=extra, storage_plugins=["other", "nvme"]))
    assert s.plugin_name == "nvme" and s.paths == ("/fast",)


# ---------------------------------------------------------------------------------------------
# the documented spellings, through LMCache's own loader (LMCACHE_CONFIG_FILE and LMCACHE_*)

DOC_YAML = """\
# 256 Tokens per KV Chunk
chunk_size: 256
# Disable local CPU
local_cpu: false
# Path to file system, local, remote or GDS-enabled mount
gds_path: "{path}"
# CuFile Buffer Size in MiB
cufile_buffer_size: 8192
storage_plugins: [gds]
extra_config:
  storage_plugin.gds.module_path: lmcache_plugin.backend
  storage_plugin.gds.class_name: GdsPluginBackend
{extra}"""


def write_yaml(tmp_path, path="/mnt/gds/cache", extra=""):
    f = tmp_path / "gds-backend.yaml"
    f.write_text(DOC_YAML.format(path=path, extra=extra))
    return str(f)


def test_documented_yaml(tmp_path):
    env = {"LMCACHE_CONFIG_FILE": write_yaml(tmp_path, extra="  use_hipfile: true\n")}
    config = config_from_env(env)
    assert not hasattr(config, "cufile_buffer_size")  # LMCache 0.5.6 drops it
    s = settings_of(config, env)
    assert (s.paths, s.buffer_size_mib, s.local_cpu, s.chunk_size, s.engine) == (
        ("/mnt/gds/cache",), 8192, False, 256, "hipfile")
    assert s.sources["buffer_size_mib"].startswith("cufile_buffer_size in ")


def test_documented_environment(tmp_path):
    env = {"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_GDS_PATH": "/mnt/nvme0/cache,/mnt/nvme1/cache",
           "LMCACHE_CUFILE_BUFFER_SIZE": "8192", "LMCACHE_LOCAL_CPU": "False",
           "LMCACHE_STORAGE_PLUGINS": "gds",
           "LMCACHE_EXTRA_CONFIG": json.dumps({**registration(), "use_cufile": False})}
    config = config_from_env(env)
    s = settings_of(config, env)
    assert s.paths == ("/mnt/nvme0/cache", "/mnt/nvme1/cache")
    assert (s.buffer_size_mib, s.local_cpu, s.chunk_size, s.engine) == (8192, False, 256, "posix")
    assert s.sources["paths"] == "environment LMCACHE_GDS_PATH"
    env["LMCACHE_EXTRA_CONFIG"] = json.dumps({**registration(), "use_hipfile": True})
    assert settings_of(config_from_env(env), env).engine == "hipfile"


def test_extra_config_from_environment_merges_with_the_files_for_the_plugin(tmp_path, caplog):
    # LMCache replaces the file's extra_config with LMCACHE_EXTRA_CONFIG; the plugin (loaded via
    # the registration repeated in the variable) still honours the file's keys.
    path = write_yaml(tmp_path, extra="  disk_io_threads: 2\n  use_hipfile: true\n")
    env = {"LMCACHE_CONFIG_FILE": path,
           "LMCACHE_EXTRA_CONFIG": json.dumps({**registration(), "use_hipfile": False})}
    config = config_from_env(env)
    assert "disk_io_threads" not in config.extra_config
    caplog.set_level(logging.INFO, "lmcache_plugin")
    s = settings_of(config, env)
    assert s.io_threads == 2 and s.engine == "auto"  # the variable's use_hipfile: false won
    assert "hidden from LMCache" in s.sources["io_threads"]
    assert any("LMCACHE_EXTRA_CONFIG replaced the extra_config" in r.getMessage() and "disk_io_threads" in
               r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_builtin_gds_backend_on_the_same_paths_is_warned_about(caplog):
    caplog.set_level(logging.INFO, "lmcache_plugin")
    s = settings_of(make_config(gds_path="/mnt/a,/mnt/b", extra_config=registration()))
    assert s.shared_with_builtin() == ["/mnt/a", "/mnt/b"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("built-in GdsBackend also runs on /mnt/a, /mnt/b" in m and P + "gds_path" in m for m in warnings)
    caplog.clear()
    s = settings_of(make_config(extra_config=plugin_extra("/mnt/a")))
    assert s.shared_with_builtin() == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------
# directories and check_config


def test_prepare_paths_creates_and_refuses(tmp_path):
    paths = [str(tmp_path / "a" / "b"), str(tmp_path / "c")]
    prepare_paths(paths)
    assert all(os.path.isdir(p) and os.listdir(p) == [] for p in paths)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as err:
        prepare_paths([str(blocker / "cache")])
    assert err.value.key == "gds_path" and "cannot be created" in str(err.value)


def test_load_settings_creates_every_path(tmp_path):
    paths = f"{tmp_path}/p0,{tmp_path}/p1"
    load_settings(make_config(extra_config=plugin_extra(paths)), environ={})
    assert os.path.isdir(tmp_path / "p0") and os.path.isdir(tmp_path / "p1")


def test_check_config_good_file_is_clean_and_creates_nothing(tmp_path):
    cache = tmp_path / "not-yet"
    f = tmp_path / "ok.yaml"
    f.write_text(yaml.safe_dump({"chunk_size": 256, "local_cpu": False, "max_local_cpu_size": 5,
                                 "storage_plugins": ["gds"], "extra_config": plugin_extra(str(cache))}))
    assert check_config(f) == []
    assert not cache.exists()


def test_check_config_lists_every_problem(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"max_local_cpu_size": 0, "gds_path": str(blocker / "c"),
                                 "cufile_buffer_size": "big", "storage_plugins": ["gds"],
                                 "extra_config": {**registration(), "use_direct_io": "maybe"}}))
    problems = check_config(f)
    text = "\n".join(problems)
    for words in ("max_local_cpu_size", "cufile_buffer_size='big'", "use_direct_io='maybe'",
                  "built-in GdsBackend"):
        assert words in text
    # the bad path is reported once the other values are fixed
    f.write_text(yaml.safe_dump({"storage_plugins": ["gds"],
                                 "extra_config": plugin_extra(str(blocker / "c"))}))
    assert any("not a directory" in p for p in check_config(f))


def test_check_config_registration(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"extra_config": plugin_extra("/c")}))
    assert any("storage_plugins" in p for p in check_config(f))
    f.write_text(yaml.safe_dump({"storage_plugins": ["gds"], "extra_config": {P + "gds_path": "/c"}}))
    assert any("module_path" in p and "lmcache_plugin.backend" in p for p in check_config(f))


def test_check_config_documented_extra_config_variable_drops_the_registration(tmp_path):
    path = write_yaml(tmp_path, path=str(tmp_path / "cache"))
    problems = check_config(path, {"LMCACHE_EXTRA_CONFIG": '{"use_cufile": false}'})
    assert any("LMCACHE_EXTRA_CONFIG replaces the whole extra_config" in p and
               '"storage_plugin.gds.module_path": "lmcache_plugin.backend"' in p for p in problems)
    # the fix from the message works: the registration repeated in the variable
    fixed = json.dumps({**registration(), "use_cufile": False})
    assert not any("LMCACHE_EXTRA_CONFIG replaces" in p for p in check_config(path, {"LMCACHE_EXTRA_CONFIG": fixed}))


def test_check_config_unreadable_and_invalid_files(tmp_path):
    assert "cannot read" in check_config(tmp_path / "missing.yaml")[0]
    f = tmp_path / "broken.yaml"
    f.write_text("a: [1, 2\n")
    assert "not valid YAML" in check_config(f)[0]
    f.write_text("- a list\n")
    assert "mapping" in check_config(f)[0]


# ---------------------------------------------------------------------------------------------
# the engine plan


def plan(fstypes, engine="auto", explicit=False, device=True):
    s = PluginSettings(paths=tuple(fstypes), engine=engine, engine_explicit=explicit,
                       sources={"engine": "use_cufile=True (extra_config['use_cufile'])" if explicit else "default"})
    return plan_engine(s, fstypes, device_memory=device)


def test_engine_plan():
    assert plan({"/a": "ext4", "/b": "xfs"}).engine == "auto"
    assert plan({"/a": "ext4"}, "posix", True).engine == "posix"
    for fs in ("tmpfs", "overlay", "ramfs"):
        p = plan({"/a": "ext4", "/b": fs})
        assert p.engine == "posix" and fs in p.reason and not p.warnings
        p = plan({"/a": fs}, "cufile", True)
        assert p.engine == "cufile" and "explicitly" in p.warnings[0]
    p = plan({"/a": "wekafs", "/b": "wekafs"})
    assert (p.engine, p.data_suffix) == ("cufile", ".weka1")
    assert plan({"/a": "ext4"}).data_suffix == ".kvcache.safetensors"
    assert plan({"/a": "ext4"}, "cufile", True, device=False).engine == "posix"
    assert plan({"/a": "wekafs"}, device=False).data_suffix == ".weka1"


def test_engine_plan_weka_refusals():
    with pytest.raises(ConfigError, match="enforces cuFile") as err:
        plan({"/a": "wekafs"}, "posix", True)
    assert "use_cufile" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(ConfigError, match="all paths on Weka, or none"):
        plan({"/a": "wekafs", "/b": "ext4"})


def test_settings_without_an_lmcache_config_object(tmp_path):
    """Tools without LMCache (the pygds CLI) read a file plus variables as LMCache would."""
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"storage_plugins": ["fast"], "gds_buffer_size": 64,
                                 "extra_config": plugin_extra("/nvme0,/nvme1", name="fast")}))
    env = {"LMCACHE_CONFIG_FILE": str(f), "LMCACHE_GDS_BUFFER_SIZE": "128"}
    s = load_settings(None, environ=env, create_dirs=False)
    assert (s.plugin_name, s.paths, s.buffer_size_mib) == ("fast", ("/nvme0", "/nvme1"), 128)


# ---------------------------------------------------------------------------------------------
# paths are absolute and expanded once; relative ones are named


def test_paths_are_absolute_and_user_expanded(tmp_path, monkeypatch):
    """A relative or `~` gds_path becomes one absolute directory, whatever the directory later."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = make_config(gds_path="~/lm", extra_config=registration())
    s = settings_of(config)
    assert s.paths == (str(tmp_path / "home" / "lm"),)
    s = settings_of(make_config(extra_config=plugin_extra(" ~/kv , rel/cache ")))
    assert s.paths == (str(tmp_path / "home" / "kv"), str(tmp_path / "rel" / "cache"))
    env = {"LMCACHE_GDS_PATH": "~/env-cache"}
    assert settings_of(make_config(extra_config=registration()), env).paths == (str(tmp_path / "home" / "env-cache"),)


def test_builtin_paths_are_matched_after_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = settings_of(make_config(gds_path="~/shared", extra_config=plugin_extra(str(tmp_path / "shared"))))
    assert s.builtin_gds_paths == (str(tmp_path / "shared"),)
    assert s.shared_with_builtin() == [str(tmp_path / "shared")]


def test_relative_path_is_warned_with_its_absolute_form(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, "lmcache_plugin")
    settings_of(make_config(extra_config=plugin_extra("/abs,rel/cache,~/home-cache")))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "gds_path='rel/cache'" in warning and "relative" in warning and "current directory" in warning
    assert f"Fix: write the absolute path, e.g. gds_path: {tmp_path / 'rel' / 'cache'}" in warning
    assert "extra_config['storage_plugin.gds.gds_path']" in warning  # where it was written
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"storage_plugins": ["gds"], "extra_config": plugin_extra("cache")}))
    [problem] = check_config(f)
    assert "gds_path='cache'" in problem and str(tmp_path / "cache") in problem and "Fix:" in problem


# ---------------------------------------------------------------------------------------------
# check_config: the registration names a real backend class; the variables are named


def config_file(tmp_path, **extra) -> str:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"storage_plugins": ["gds"],
                                 "extra_config": {**plugin_extra(str(tmp_path / "cache")), **extra}}))
    return str(f)


@pytest.mark.parametrize("key,value,words", [
    ("module_path", "lmcache_plugin.backnd", "cannot import it (ModuleNotFoundError: No module named"),
    ("module_path", "lmcache_plugin_typo.backend", "cannot import it"),
    ("class_name", "GdsPluginBackand", "module lmcache_plugin.backend has no such class"),
    ("class_name", "CacheEngineKey", "is not an LMCache storage backend"),  # imported there, not a backend
])
def test_check_config_proves_the_registered_class(tmp_path, key, value, words):
    problems = check_config(config_file(tmp_path, **{P + key: value}))
    [problem] = problems
    assert f"{P}{key}={value!r}" in problem and words in problem
    assert "Fix: write storage_plugin.gds.module_path: lmcache_plugin.backend and " \
           "storage_plugin.gds.class_name: GdsPluginBackend" in problem


def test_check_config_a_module_that_fails_while_importing(tmp_path, monkeypatch):
    (tmp_path / "broken_backend_mod.py").write_text("raise RuntimeError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    [problem] = check_config(config_file(tmp_path, **{P + "module_path": "broken_backend_mod"}))
    assert "RuntimeError: needs a GPU" in problem and "module_path='broken_backend_mod'" in problem


def test_check_config_without_lmcache_says_what_it_could_not_check(tmp_path):
    """Where lmcache cannot be imported, the class is not checked, and the note says so."""
    import subprocess
    import sys

    path = config_file(tmp_path, **{P + "class_name": "Typo"})
    code = ("import sys, json; sys.modules['lmcache'] = None\n"
            "from lmcache_plugin.config import check_config\n"
            "notes = []\n"
            f"print(json.dumps([check_config({path!r}, notes=notes), notes]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    problems, notes = json.loads(out.stdout)
    assert problems == []
    [note] = notes
    assert "class_name='Typo'" in note and "were not checked" in note and "lmcache" in note and "install" in note


@pytest.mark.parametrize("text,words", [
    ('{"storage_plugin.gds.use_cufile": false,}', "not valid JSON (Expecting property name enclosed in double "
                                                  "quotes at line 1 column 41, character 40)"),
    ("use_cufile: false", "not valid JSON (Expecting value at line 1 column 1, character 0)"),
    ("[1, 2]", "JSON but not an object"),
])
def test_invalid_extra_config_variable_is_named(tmp_path, text, words):
    path = config_file(tmp_path)
    problems = check_config(path, {"LMCACHE_EXTRA_CONFIG": text})
    [problem] = [p for p in problems if "LMCACHE_EXTRA_CONFIG" in p]
    assert words in problem and repr(text) in problem and "Fix: write one JSON object" in problem
    # LMCache keeps the file's extra_config then: the registration there is not reported as gone
    assert not any("replaces the whole extra_config" in p for p in problems)
    env = {"LMCACHE_CONFIG_FILE": path, "LMCACHE_EXTRA_CONFIG": text}
    with pytest.raises(ConfigError, match="LMCACHE_EXTRA_CONFIG") as err:
        settings_of(None, env)
    assert words in str(err.value)
    if "not valid JSON" in words:  # LMCache itself warns and loads the plugin; the plugin refuses
        with pytest.raises(ConfigError, match="LMCACHE_EXTRA_CONFIG") as err:
            settings_of(config_from_env(env), env)
        assert words in str(err.value)


def test_check_config_names_the_variable_of_a_bad_value(tmp_path):
    problems = check_config(config_file(tmp_path), {"LMCACHE_CHUNK_SIZE": "abc", "LMCACHE_USE_GDS": "maybe"})
    text = "\n".join(problems)
    assert "chunk_size='abc' (from environment LMCACHE_CHUNK_SIZE): not a whole number" in text
    assert "use_gds='maybe' (from environment LMCACHE_USE_GDS): not a boolean" in text


def test_check_config_refuses_negative_io_threads(tmp_path):
    [problem] = check_config(config_file(tmp_path, disk_io_threads=-1))
    assert "disk_io_threads=-1" in problem and "at least 0" in problem and "Fix:" in problem


def test_checksum_setting_from_yaml_spellings(tmp_path):
    """`checksum: off` unquoted is YAML false; it means off, as written."""
    f = tmp_path / "c.yaml"
    f.write_text(f"storage_plugins: [gds]\nextra_config:\n  storage_plugin.gds.module_path: lmcache_plugin.backend\n"
                 f"  storage_plugin.gds.class_name: GdsPluginBackend\n  storage_plugin.gds.gds_path: {tmp_path}\n"
                 "  storage_plugin.gds.checksum: off\n")
    s = load_settings(None, environ={"LMCACHE_CONFIG_FILE": str(f)}, create_dirs=False)
    assert s.checksum == "off" and "storage_plugin.gds.checksum" in s.sources["checksum"]
    f.write_text(f.read_text().replace("checksum: off", "checksum: on"))
    [problem] = check_config(f)
    assert "checksum=True" in problem and "auto | once | always | off" in problem


@pytest.mark.parametrize("text", ["2G", "1.5TiB", ".5G", "3.M", " 64 kb ", "4096"])
def test_sizes_read_as_the_command_line_reads_them(text):
    from pygds.cli.output import parse_size

    s = settings_of(with_paths(gds_capacity_bytes=text))
    assert s.capacity_bytes == parse_size(text)


def test_unwritable_path_from_the_environment_names_the_variable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {"LMCACHE_GDS_PATH": str(blocker / "cache")}
    with pytest.raises(ConfigError) as err:
        load_settings(make_config(extra_config=registration()), environ=env)
    message = str(err.value)
    assert f"gds_path={str(blocker / 'cache')!r} (from environment LMCACHE_GDS_PATH)" in message
    assert "cannot be created" in message and "Fix: create it" in message
