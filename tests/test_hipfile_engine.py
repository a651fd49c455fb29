"""The hipFile engine, its driver and registered buffers, the `auto` choice and the never-hang guard
(hipFile's documented requirements, which only `pygds info` checks: test_hipfile_requirements.py).

No AMD GPU is here. On this machine pygds must refuse hipFile clearly and pick another engine. To run
the engine's real code paths, subprocesses load two stand-ins compiled here: a libhipfile.so.0 that
keeps hipFile's C ABI (hipFileError_t by value, the descriptor layout, -errno and -code returns, the
calls libhipfile leaves unimplemented returning hipFileInternalError) and moves bytes with pread/pwrite,
logging every call; and the HIP runtime stand-in of test_hip_memory.py. The stand-in's "device"
memory is host memory, so these tests prove pygds's plumbing and choices, not hipFile's data path.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import pygds
from pygds import fsinfo
from pygds.engines import hipfile as hf
from pygds.errors import LibraryNotFoundError
from test_hip_memory import build_fake_hip_runtime, hip_env, needs_hip_python, run_py

FAKE_LIBHIPFILE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct { int err; int hip_drv_err; } hipFileError_t;
typedef struct { int type; union { int fd; void *hFile; } handle; const void *fs_ops; } hipFileDescr_t;
typedef struct { int fd; } handle_t;

static int refs;
static struct { const void *base; size_t size; } bufs[64];

static hipFileError_t status(int err) { hipFileError_t s = {err, 0}; return s; }
static void note(const char *fmt, ...) {
    const char *path = getenv("PYGDS_FAKE_HIPFILE_LOG");
    if (!path) return;
    FILE *f = fopen(path, "a");
    va_list ap;
    va_start(ap, fmt); vfprintf(f, fmt, ap); va_end(ap);
    fputc('\n', f);
    fclose(f);
}

hipFileError_t hipFileGetVersion(unsigned *major, unsigned *minor, unsigned *patch) {
    if (major) *major = 0;
    if (minor) *minor = 2;
    if (patch) *patch = 0;
    return status(0);
}
const char *hipFileGetOpErrorString(int s) { return s ? "fake hipFile error" : "hipFile success"; }
hipFileError_t hipFileDriverOpen(void) { note("open %d", ++refs); return status(0); }
hipFileError_t hipFileDriverClose(void) {
    if (!refs) return status(5001);
    note("close %d", --refs);
    return status(0);
}
int64_t hipFileUseCount(void) { return refs; }

/* declared by hipfile.h, not implemented by libhipfile: */
hipFileError_t hipFileDriverGetProperties(void *props) { (void)props; return status(5030); }
hipFileError_t hipFileGetParameterSizeT(int p, size_t *v) { (void)p; (void)v; return status(5030); }
hipFileError_t hipFileGetParameterBool(int p, _Bool *v) { (void)p; (void)v; return status(5030); }
hipFileError_t hipFileGetParameterString(int p, char *s, int n) { (void)p; (void)s; (void)n; return status(5030); }

hipFileError_t hipFileHandleRegister(void **fh, hipFileDescr_t *descr) {
    if (!fh || !descr) return status(5022);
    if (descr->type != 1) return status(5008);
    int flags = fcntl(descr->handle.fd, F_GETFL);
    if (flags < 0) return status(5022);
    handle_t *h = malloc(sizeof *h);
    h->fd = descr->handle.fd;
    *fh = h;
    note("register fd=%d direct=%d", h->fd, (flags & O_DIRECT) != 0);
    return status(0);
}
void hipFileHandleDeregister(void *fh) {
    if (!fh) return;
    note("deregister fd=%d", ((handle_t *)fh)->fd);
    free(fh);
}
hipFileError_t hipFileBufRegister(const void *base, size_t size, int flags) {
    (void)flags;
    for (int i = 0; i < 64; i++) if (bufs[i].base == base) return status(5023);
    for (int i = 0; i < 64; i++)
        if (!bufs[i].base) {
            bufs[i].base = base; bufs[i].size = size;
            note("bufregister %zu", size);
            return status(0);
        }
    return status(5036);
}
hipFileError_t hipFileBufDeregister(const void *base) {
    for (int i = 0; i < 64; i++)
        if (bufs[i].base == base) { bufs[i].base = NULL; note("bufderegister"); return status(0); }
    return status(5024);
}
static ssize_t io(int writing, void *fh, const void *base, size_t size, int64_t off, int64_t boff) {
    const char *fail = getenv("PYGDS_FAKE_HIPFILE_FAIL");
    if (!refs) { errno = EINVAL; return -1; }
    if (fail && fail[0] == 'E') { errno = atoi(fail + 1); return -1; }
    if (fail) return -atoi(fail);
    handle_t *h = fh;
    note("%s fd=%d base=%p size=%zu off=%lld boff=%lld", writing ? "write" : "read", h->fd, base, size,
         (long long)off, (long long)boff);
    return writing ? pwrite(h->fd, (const char *)base + boff, size, off)
                   : pread(h->fd, (char *)base + boff, size, off);
}
ssize_t hipFileRead(void *fh, void *base, size_t size, int64_t off, int64_t boff) {
    return io(0, fh, base, size, off, boff);
}
ssize_t hipFileWrite(void *fh, const void *base, size_t size, int64_t off, int64_t boff) {
    return io(1, fh, base, size, off, boff);
}
"""

# Common head of the subprocess scripts: "device" memory the stand-ins can touch, and the call log.
PRELUDE = """
import ctypes, json, os
import pygds
from pygds.engines import hipfile as hf
from pygds.memory import BufferView

def device(data):
    mem = ctypes.create_string_buffer(data, len(data))
    return BufferView(ctypes.addressof(mem), len(data), "device", 0, False, mem)

def log():
    with open(os.environ["PYGDS_FAKE_HIPFILE_LOG"]) as f:
        return f.read().split("\\n")[:-1]

out = {}
"""


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the libhipfile and HIP runtime stand-ins."""
    lib_dir = build_fake_hip_runtime(tmp_path_factory.mktemp("hip_stand_ins"))
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    (lib_dir / "fake_hipfile.c").write_text(FAKE_LIBHIPFILE_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(lib_dir / "libhipfile.so.0"),
                    str(lib_dir / "fake_hipfile.c")], check=True, capture_output=True)
    return lib_dir


def engine_env(lib_dir: Path, log: Path, **extra: str) -> dict[str, str]:
    """A "ROCm machine": libhipfile named by PYGDS_HIPFILE_LIB, the HIP runtime on the loader path, and a
    libcufile that is surely absent, so `auto` is decided by hipFile alone."""
    return hip_env(lib_dir, PYGDS_HIPFILE_LIB=str(lib_dir / "libhipfile.so.0"), PYGDS_FAKE_HIPFILE_LOG=str(log),
                   PYGDS_CUFILE_LIB="/nonexistent/libcufile.so.0", **extra)


def run(script: str, env: dict[str, str]) -> dict:
    out = run_py(PRELUDE + script + "\nprint(json.dumps(out))\n", env, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


# --- this machine: no hipFile ---------------------------------------------------------------------
@pytest.mark.skipif(hf.usable().ok, reason="hipFile is usable on this machine")
def test_auto_on_this_machine_is_not_hipfile_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYGDS_ENGINE", raising=False)
    choice = pygds.choose_engine("auto")
    assert choice.name != "hipfile"
    assert "hipFile: " in choice.reason and hf.usable().reason in choice.reason
    with pytest.raises(pygds.PygdsError) as info:
        pygds.File(tmp_path / "x.bin", "w", engine="hipfile")
    message = str(info.value)
    if isinstance(info.value, LibraryNotFoundError):
        assert message.startswith("libhipfile not found. Looked in:\n  PYGDS_HIPFILE_LIB: not set\n")
        assert "\n  /opt/rocm" in message and "\n  dynamic loader: libhipfile.so.0: " in message
        assert "Fix: install hipFile" in message
    else:  # a libhipfile exists here but no AMD GPU answers
        assert isinstance(info.value, pygds.DriverUnavailableError) and "hipFile cannot be used" in message
    assert (tmp_path / "x.bin").stat().st_size == 0


# --- a simulated ROCm machine -------------------------------------------------------------------
def test_auto_picks_hipfile_and_moves_device_memory_through_it(stand_ins: Path, tmp_path: Path) -> None:
    path = tmp_path / "kv.bin"
    script = f"""
data = os.urandom(10000)
src, dst = device(data), device(bytes(10000))
choice = pygds.choose_engine("auto")
out["choice"] = [choice.name, choice.reason]
with pygds.File({str(path)!r}, "w") as f:
    out["engine"], out["fd"] = f.engine, f.fd
    out["refs_open"] = hf.HipFileDriver.use_count()
    out["writes"] = [f.write(src, 6000), f.write(src, 4000, file_offset=6000, buf_offset=6000),
                     f.write(b"host bytes", file_offset=10000)]
out["refs_closed"] = hf.HipFileDriver.use_count()
with pygds.File({str(path)!r}, "r", engine="hipfile") as f:
    out["read"] = f.read(dst)
    host = bytearray(10)
    out["read_host"] = f.read(host, file_offset=10000)
out["same"] = ctypes.string_at(dst.ptr, 10000) == data and open({str(path)!r}, "rb").read(10000) == data
out["host"] = host.decode()
out["src"], out["dst"] = hex(src.ptr), hex(dst.ptr)
out["log"] = log()
"""
    r = run(script, engine_env(stand_ins, tmp_path / "calls.log"))
    name, reason = r["choice"]
    assert name == "hipfile", reason
    assert reason == (f"libhipfile 0.2.0 at {stand_ins / 'libhipfile.so.0'} and HIP runtime "
                      f"{stand_ins / 'libamdhip64.so'} usable with 1 device(s)")
    assert r["engine"] == "hipfile" and r["refs_open"] == 1 and r["refs_closed"] == 0
    assert r["writes"] == [6000, 4000, 10] and r["read"] == 10000 and r["read_host"] == 10
    assert r["same"] is True and r["host"] == "host bytes"
    src6000 = hex(int(r["src"], 16) + 6000)
    fd = r["fd"]
    assert r["log"][:6] == ["open 1", f"register fd={fd} direct=0",
                            f"write fd={fd} base={r['src']} size=6000 off=0 boff=0",
                            f"write fd={fd} base={src6000} size=4000 off=6000 boff=0",  # host bytes: no call
                            f"deregister fd={fd}", "close 0"]
    assert r["log"][6:8] == ["open 1", f"register fd={fd} direct=0"]
    assert r["log"][8] == f"read fd={fd} base={r['dst']} size=10000 off=0 boff=0"
    assert r["log"][9:] == [f"deregister fd={fd}", "close 0"]  # the host read went through POSIX


def test_the_public_driver_and_registered_buffer_work_on_hipfile_as_on_cufile(stand_ins: Path, tmp_path: Path) -> None:
    """`pygds.Driver(engine=...)`, `register()` and `pygds.RegisteredBuffer(..., engine=...)` are the same
    front door on hipFile: `auto` resolves to hipFile here, and a write from inside the registered range
    reaches libhipfile as (registered base, offset)."""
    script = f"""
src = device(os.urandom(8192))
with pygds.Driver() as auto, pygds.Driver("hipfile") as named, auto.register(src) as reg:
    out["engines"] = [auto.engine, named.engine, reg.engine]
    out["refs"] = named.use_count()
    with pygds.File({str(tmp_path / "r.bin")!r}, "w") as f:
        out["written"] = f.write(src, 100, buf_offset=4096)
with pygds.RegisteredBuffer(src, engine="hipfile") as own:
    out["own"] = [own.engine, own.nbytes, hf.HipFileDriver.use_count()]
out["refs_after"] = hf.HipFileDriver.use_count()
for kwargs in ({{"engine": "posix"}}, {{"engine": "cufile", "driver": None}}):
    try:
        pygds.RegisteredBuffer(src, **kwargs)
    except pygds.PygdsError as e:
        out.setdefault("refused", []).append(type(e).__name__)
out["exported"] = pygds.HipFileError is pygds.errors.HipFileError and issubclass(pygds.HipError, pygds.PygdsError)
out["base"] = hex(src.ptr)
out["log"] = log()
"""
    r = run(script, engine_env(stand_ins, tmp_path / "calls.log"))
    assert r["engines"] == ["hipfile", "hipfile", "hipfile"]
    assert r["refs"] == 1 and r["refs_after"] == 0  # one open driver behind both references
    assert r["written"] == 100
    assert [line.split(" ", 2)[2] for line in r["log"] if line.startswith("write")] == [
        f"base={r['base']} size=100 off=0 boff=4096"]
    assert r["log"].count("bufregister 8192") == 2 and r["log"].count("bufderegister") == 2
    assert r["own"] == ["hipfile", 8192, 1]
    assert r["refused"] == ["DriverUnavailableError", "DriverUnavailableError"]
    assert r["exported"] is True


def test_registered_buffers_and_what_hipfile_does_not_support(stand_ins: Path, tmp_path: Path) -> None:
    script = f"""
from pygds.errors import HipFileError, InvalidArgumentError, NotSupportedError
src = device(os.urandom(8192))
with hf.HipFileDriver() as drv, drv.register(src) as reg, pygds.File({str(tmp_path / "r.bin")!r}, "w") as f:
    out["refs"] = hf.HipFileDriver.use_count()
    out["written"] = f.write(src, 100, buf_offset=4096)
    try:
        hf.HipFileRegisteredBuffer(src)
    except HipFileError as e:
        out["twice"] = [e.name, e.code]
    for key, call in (("properties", lambda: drv.properties),
                      ("range", lambda: drv.parameter_range("hipFileParamPollthresholdSizeKB")),
                      ("get", lambda: drv.get_parameter("PROPERTIES_MAX_DIRECT_IO_SIZE_KB")),
                      ("cufile_only", lambda: drv.get_parameter("CUFILE_PARAM_GDS_FALLBACK_IO")),
                      ("unknown", lambda: drv.get_parameter("nonsense"))):
        try:
            call()
        except (NotSupportedError, InvalidArgumentError) as e:
            out[key] = [type(e).__name__, str(e)]
    out["parameters"] = drv.parameters()
out["refs_after"] = hf.HipFileDriver.use_count()
out["base"] = hex(src.ptr)
out["log"] = log()
"""
    r = run(script, engine_env(stand_ins, tmp_path / "calls.log"))
    assert r["refs"] == 1 and r["refs_after"] == 0  # one driver open shared by all three users
    assert r["written"] == 100
    writes = [line for line in r["log"] if line.startswith("write")]
    assert writes == [f"write fd={writes[0].split()[1][3:]} base={r['base']} size=100 off=0 boff=4096"]
    assert "bufregister 8192" in r["log"] and "bufderegister" in r["log"]
    assert r["twice"] == ["hipFileMemoryAlreadyRegistered", 5023]
    assert r["properties"][0] == "NotSupportedError"
    assert r["properties"][1].startswith("hipFileDriverGetProperties is not supported by hipFile: libhipfile 0.2.0 "
                                         "declares it but does not implement it")
    assert r["range"] == ["NotSupportedError", "parameter ranges are not supported by hipFile: hipfile.h has no "
                                               "counterpart of cuFileGetParameterMinMaxValue (asked for "
                                               "hipFileParamPollthresholdSizeKB)"]
    assert r["get"][0] == "NotSupportedError" and r["get"][1].startswith("hipFileGetParameterSizeT is not supported")
    assert r["cufile_only"][0] == "NotSupportedError" and "no hipFile counterpart" in r["cufile_only"][1]
    assert r["unknown"][0] == "InvalidArgumentError" and "hipFileParam*" in r["unknown"][1]
    params = r["parameters"]
    assert len(params) == 12 + 12 + 3 and all(v.startswith("unavailable: ") for v in params.values())


def test_hipfile_errors_reach_the_caller_named(stand_ins: Path, tmp_path: Path) -> None:
    script = f"""
from pygds.errors import HipFileError, IOFailedError
src = device(b"x" * 4096)
with pygds.File({str(tmp_path / "e.bin")!r}, "w", engine="hipfile") as f:
    for fail in ("5027", "E28"):
        os.environ["PYGDS_FAKE_HIPFILE_FAIL"] = fail
        try:
            f.write(src)
        except (HipFileError, IOFailedError) as e:
            out[fail] = [type(e).__name__, getattr(e, "name", None), getattr(e, "errno", None), str(e)]
    del os.environ["PYGDS_FAKE_HIPFILE_FAIL"]
    out["after"] = f.write(src)
"""
    r = run(script, engine_env(stand_ins, tmp_path / "calls.log"))
    kind, name, _, message = r["5027"]
    assert (kind, name) == ("HipFileError", "hipFileHandleNotRegistered")
    assert message.startswith(f"hipFileWrite failed on {tmp_path / 'e.bin'}: hipFileHandleNotRegistered (5027): ")
    kind, _, errno_, message = r["E28"]
    assert (kind, errno_) == ("IOFailedError", 28) and "file system is full" in message
    assert r["after"] == 4096


def test_o_direct_host_memory_goes_through_a_buffered_twin(stand_ins: Path, tmp_path: Path) -> None:
    ok, detail = fsinfo.probe_o_direct(str(tmp_path))
    if not ok:
        pytest.skip(f"O_DIRECT does not work in {tmp_path}: {detail}")
    path = tmp_path / "direct.bin"
    script = f"""
payload = os.urandom(9000)
with pygds.File({str(path)!r}, "w", engine="hipfile", direct=True) as f:
    out["fds"] = sorted(os.listdir("/proc/self/fd"), key=int)
    out["written"] = f.write(payload, file_offset=3)
with pygds.File({str(path)!r}, "r", engine="hipfile", direct=True) as f:
    back = bytearray(9000)
    out["read"] = f.read(back, file_offset=3)
out["same"] = bytes(back) == payload and open({str(path)!r}, "rb").read()[3:] == payload
out["log"] = log()
"""
    r = run(script, engine_env(stand_ins, tmp_path / "calls.log"))
    assert r["written"] == r["read"] == 9000 and r["same"] is True
    assert any(line.startswith("register fd=") and line.endswith("direct=1") for line in r["log"])
    assert not [line for line in r["log"] if line.startswith(("read", "write"))]  # all of it through POSIX


@needs_hip_python
def test_hip_memory_from_hip_python_goes_through_hipfile(stand_ins: Path, tmp_path: Path) -> None:
    """With hip-python, DeviceBuffer and raw pointers are recognised as HIP device memory by pointer kind."""
    script = f"""
from pygds import memory
data = os.urandom(5000)
with memory.DeviceBuffer(5000) as dev, pygds.File({str(tmp_path / "h.bin")!r}, "w+", engine="hipfile") as f:
    dev.copy_from_host(data)
    out["kind"] = memory.as_buffer(pygds.Pointer(dev.ptr, 5000)).kind
    out["written"] = f.write(pygds.Pointer(dev.ptr, 5000))
    dev.copy_from_host(bytes(5000))
    out["read"] = f.read(dev)
    back = bytearray(5000)
    dev.copy_to_host(back)
    out["same"] = bytes(back) == data
    out["base"] = hex(dev.ptr)
out["log"] = [line.split(" fd=")[0] + " " + line.split(" ", 2)[2] for line in log()
              if line.startswith(("read", "write"))]
"""
    r = run(script, engine_env(stand_ins, tmp_path / "calls.log"))
    assert r["kind"] == "device" and r["written"] == r["read"] == 5000 and r["same"] is True
    assert r["log"] == [f"write base={r['base']} size=5000 off=0 boff=0",
                        f"read base={r['base']} size=5000 off=0 boff=0"]


@pytest.mark.parametrize("runtime, expected", [
    ({"PYGDS_FAKE_HIP_HANG": "1"}, "the HIP runtime did not answer hipInit within 1 s"),
    ({"PYGDS_FAKE_HIP_DEVICES": "0"}, "hipInit failed with hipErrorNoDevice (100)"),
])
def test_the_guard_refuses_hipfile_without_a_gpu(stand_ins: Path, tmp_path: Path, runtime: dict, expected: str) -> None:
    script = f"""
import time
choice = pygds.choose_engine("auto")
out["auto"] = [choice.name, choice.reason]
start = time.monotonic()
try:
    pygds.File({str(tmp_path / "g.bin")!r}, "w", engine="hipfile")
except pygds.DriverUnavailableError as e:
    out["refused"] = [round(time.monotonic() - start, 2), str(e)]
with pygds.File({str(tmp_path / "g.bin")!r}, "w") as f:
    out["fallback"] = [f.engine, f.write(b"still written")]
out["log"] = log() if os.path.exists(os.environ["PYGDS_FAKE_HIPFILE_LOG"]) else []
"""
    r = run(script, engine_env(stand_ins, tmp_path / "calls.log", **runtime))
    name, reason = r["auto"]
    assert name == "posix" and f"hipFile: libhipfile 0.2.0 at {stand_ins / 'libhipfile.so.0'} is installed but " \
                                f"{expected}" in reason
    elapsed, message = r["refused"]
    assert message.startswith(f"hipFile cannot be used: {expected}") and "Fix: " in message
    assert elapsed < 5  # the one-second guard, with room for a slow machine
    assert r["fallback"] == ["posix", 13]
    assert r["log"] == []  # no hipFile call ran
