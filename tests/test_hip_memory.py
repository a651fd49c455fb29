"""pygds.hip and the HIP side of pygds.memory, on a machine without an AMD GPU.

What runs everywhere: the never-hang HIP runtime guard and `hip_available()` against no ROCm at all
and against a stand-in `libamdhip64.so` compiled here (it answers hipInit with N devices, or never);
the clear errors of every helper without HIP; how `memory.gpu_runtime()` picks HIP (torch built for
ROCm, DLPack ROCm devices). Where hip-python is installed, its calls run against the stand-in too:
allocation, pointer kinds, copies, `DeviceBuffer`/`PinnedBuffer` and the POSIX engine moving HIP
device memory. The stand-in's "device" memory is host memory it tracks, so those tests prove the
hip-python calling conventions and pygds's dispatch, not a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pygds import hip, memory
from pygds.errors import DriverUnavailableError
from pygds.memory import BufferView, as_buffer

REPO = Path(__file__).resolve().parent.parent
HIP_PYTHON = importlib.util.find_spec("hip") is not None
needs_hip_python = pytest.mark.skipif(not HIP_PYTHON, reason="hip-python is not installed (pip install hip-python)")
no_rocm_here = pytest.mark.skipif(hip.check_runtime().ok, reason="a HIP runtime with a GPU is usable here")

# A stand-in for the HIP runtime: the functions pygds's guard and hip-python call, with memory the
# stand-in allocates from the heap and remembers as device or pinned. PYGDS_FAKE_HIP_DEVICES sets the
# device count (0: hipInit fails with hipErrorNoDevice); PYGDS_FAKE_HIP_HANG makes hipInit never return.
FAKE_HIP_RUNTIME_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int hipError_t;
enum { hipSuccess = 0, hipErrorInvalidValue = 1, hipErrorNoDevice = 100, hipErrorInvalidDevice = 101 };
enum { TypeUnregistered = 0, TypeHost = 1, TypeDevice = 2 };
typedef struct { int type; int device; void *devicePointer; void *hostPointer; int isManaged;
                 unsigned allocationFlags; } hipPointerAttribute_t;

static struct { char *base; size_t size; int type; int device; } table[256];
static __thread int current;

static int devices(void) { const char *v = getenv("PYGDS_FAKE_HIP_DEVICES"); return v ? atoi(v) : 1; }

hipError_t hipInit(unsigned flags) {
    (void)flags;
    if (getenv("PYGDS_FAKE_HIP_HANG")) for (;;) pause();
    return devices() > 0 ? hipSuccess : hipErrorNoDevice;
}
hipError_t hipGetDeviceCount(int *count) { *count = devices(); return devices() > 0 ? hipSuccess : hipErrorNoDevice; }
hipError_t hipGetDevice(int *device) { *device = current; return hipSuccess; }
hipError_t hipSetDevice(int device) {
    if (device < 0 || device >= devices()) return hipErrorInvalidDevice;
    current = device;
    return hipSuccess;
}
hipError_t hipRuntimeGetVersion(int *version) { *version = 70251831; return hipSuccess; }

static hipError_t track(void **ptr, size_t size, int type) {
    for (int i = 0; i < 256; i++)
        if (!table[i].base) {
            table[i].base = calloc(1, size ? size : 1);
            table[i].size = size; table[i].type = type; table[i].device = current;
            *ptr = table[i].base;
            return hipSuccess;
        }
    return 2;  /* hipErrorOutOfMemory */
}
static hipError_t untrack(void *ptr) {
    for (int i = 0; i < 256; i++)
        if (table[i].base == ptr) { free(ptr); table[i].base = NULL; return hipSuccess; }
    return hipErrorInvalidValue;
}
hipError_t hipMalloc(void **ptr, size_t size) { return track(ptr, size, TypeDevice); }
hipError_t hipHostMalloc(void **ptr, size_t size, unsigned flags) { (void)flags; return track(ptr, size, TypeHost); }
hipError_t hipFree(void *ptr) { return untrack(ptr); }
hipError_t hipHostFree(void *ptr) { return untrack(ptr); }
hipError_t hipPointerGetAttributes(hipPointerAttribute_t *attr, const void *ptr) {
    for (int i = 0; i < 256; i++)
        if (table[i].base && (const char *)ptr >= table[i].base && (const char *)ptr < table[i].base + table[i].size) {
            memset(attr, 0, sizeof *attr);
            attr->type = table[i].type; attr->device = table[i].device;
            attr->devicePointer = attr->hostPointer = (void *)ptr;
            return hipSuccess;
        }
    return hipErrorInvalidValue;
}
hipError_t hipMemcpy(void *dst, const void *src, size_t n, int kind) {
    (void)kind;
    memmove(dst, src, n);
    return hipSuccess;
}
hipError_t hipMemcpyAsync(void *dst, const void *src, size_t n, int kind, void *stream) {
    (void)stream;
    return hipMemcpy(dst, src, n, kind);
}
hipError_t hipStreamSynchronize(void *stream) { (void)stream; return hipSuccess; }
const char *hipGetErrorName(hipError_t e) { return e ? "hipErrorFake" : "hipSuccess"; }
const char *hipGetErrorString(hipError_t e) { return hipGetErrorName(e); }
"""


def build_fake_hip_runtime(dest: Path) -> Path:
    """Compile the stand-in as `dest/libamdhip64.so` (the name hip-python dlopens); returns `dest`."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        pytest.skip("no C compiler to build the HIP runtime stand-in")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "fake_hip.c").write_text(FAKE_HIP_RUNTIME_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(dest / "libamdhip64.so"),
                    str(dest / "fake_hip.c")], check=True, capture_output=True)
    return dest


def hip_env(lib_dir: Path | None, **extra: str) -> dict[str, str]:
    """A subprocess environment whose HIP runtime is the stand-in in `lib_dir` (None: no HIP at all)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYGDS_", "ROCM_", "HIP_")) and k != "LD_LIBRARY_PATH"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    env.update(extra)
    return env


def run_py(script: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fake_hip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_hip_runtime(tmp_path_factory.mktemp("fake_hip"))


# --- without ROCm --------------------------------------------------------------------------------
@no_rocm_here
def test_hip_helpers_report_clearly_without_hip() -> None:
    assert hip.hip_available() is False
    assert hip.device_count() == 0
    for call in (lambda: hip.mem_alloc(16, 0), lambda: hip.mem_alloc_host(16), lambda: hip.pointer_kind(0x1000),
                 lambda: hip.memcpy(0x1000, "device", 0x2000, "host", 4), lambda: hip.stream_synchronize(0),
                 hip.current_device, lambda: hip.set_device(0)):
        with pytest.raises(DriverUnavailableError) as info:
            call()
        message = str(info.value)
        assert message.startswith("HIP is not usable: ") and "libamdhip64" in message and "hip-python" in message


def test_hip_available_is_false_in_a_fresh_process_without_rocm() -> None:
    script = """
        import json, sys, pygds.hip as h
        ok = h.hip_available()
        print(json.dumps(dict(ok=ok, reason=h._state["reason"], hip_python="hip" in sys.modules)))
    """
    out = run_py(script, hip_env(None, PYGDS_AMDHIP_LIB="/nonexistent/libamdhip64.so"), timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] is False and result["hip_python"] is False  # hip-python is never imported then
    assert result["reason"] == ("the HIP runtime libamdhip64 cannot be loaded "
                                "(PYGDS_AMDHIP_LIB=/nonexistent/libamdhip64.so: no such file)")


def test_the_guard_answers_for_the_stand_in_runtime(fake_hip: Path) -> None:
    script = """
        import json; from pygds import hip
        c = hip.check_runtime()
        print(json.dumps(dict(ok=c.ok, reason=c.reason, fix=c.fix)))
    """
    for devices, expected in (("2", "usable with 2 device(s)"), ("0", "hipInit failed with hipErrorNoDevice (100)")):
        out = run_py(script, hip_env(fake_hip, PYGDS_FAKE_HIP_DEVICES=devices))
        assert out.returncode == 0, out.stderr
        check = json.loads(out.stdout)
        assert check["ok"] is (devices != "0") and expected in check["reason"], check
        assert str(fake_hip / "libamdhip64.so") in check["reason"]
        if devices == "0":
            assert "/dev/kfd" in check["fix"] and "POSIX" in check["fix"]


def test_a_hip_runtime_already_in_the_process_is_the_one_probed(fake_hip: Path, tmp_path: Path) -> None:
    """torch built for ROCm maps its own libamdhip64: pygds must not load a second HIP runtime beside it."""
    other = tmp_path / "elsewhere" / "libamdhip64.so.7"
    other.parent.mkdir()
    shutil.copy(fake_hip / "libamdhip64.so", other)
    script = f"""
        import ctypes; from pygds import hip
        ctypes.CDLL({str(other)!r})
        print(hip.check_runtime().reason)
    """
    out = run_py(script, hip_env(fake_hip, PYGDS_AMDHIP_LIB=str(fake_hip / "libamdhip64.so")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"HIP runtime {other} usable with 1 device(s)"
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n"
                    "7f02-7f03 r-xp 00000000 08:01 43 /opt/rocm-7.2.0/lib/libamdhip64.so.7.2.70200\n")
    assert hip.loaded_runtime(str(maps)) == "/opt/rocm-7.2.0/lib/libamdhip64.so.7.2.70200"
    assert hip.loaded_runtime(str(tmp_path / "absent")) is None


def test_a_hanging_hip_runtime_is_refused_within_a_second(fake_hip: Path) -> None:
    script = """
        import time; from pygds import hip
        t = time.monotonic()
        c = hip.check_runtime()
        print(c.ok, round(time.monotonic() - t, 2), hip.hip_available(), c.reason)
    """
    out = run_py(script, hip_env(fake_hip, PYGDS_FAKE_HIP_HANG="1"), timeout=30)
    assert out.returncode == 0, out.stderr
    ok, elapsed, available, reason = out.stdout.split(" ", 3)
    assert ok == "False" and available == "False"
    assert reason.strip() == "the HIP runtime did not answer hipInit within 1 s"
    assert float(elapsed) < 5  # bounded by the guard's one-second join, with room for a slow CI machine


@pytest.mark.skipif(HIP_PYTHON, reason="hip-python is installed here")
def test_without_hip_python_hip_is_unavailable_and_says_what_to_install(fake_hip: Path) -> None:
    script = """
        import pygds.hip as h
        from pygds import memory
        print(h.hip_available(), h._state["reason"])
        try:
            memory.DeviceBuffer(16)  # an AMD GPU answers: HIP is the runtime, and it says what is missing
        except Exception as e:
            print(memory.gpu_runtime().__name__, type(e).__name__, e)
    """
    out = run_py(script, hip_env(fake_hip))
    assert out.returncode == 0, out.stderr
    available, failure = out.stdout.splitlines()
    assert available.startswith("False hip-python is not installed (") and "pip install hip-python" in available
    assert failure.startswith("pygds.hip DriverUnavailableError HIP is not usable: hip-python is not installed")


# --- which runtime handles GPU memory -----------------------------------------------------------
@no_rocm_here
def test_cuda_stays_the_runtime_where_neither_is_usable() -> None:
    if memory.cuda_available():
        pytest.skip("CUDA is usable here")
    assert memory.gpu_runtime() is memory.cuda and memory.gpu_available() is False


@no_rocm_here
def test_a_torch_built_for_rocm_selects_hip_and_its_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.version, "hip", "7.2.26015", raising=False)
    assert memory.gpu_runtime() is hip
    assert memory.gpu_available() is False
    device_view = BufferView(0x7F0000000000, 64, "device", 0)
    with pytest.raises(DriverUnavailableError, match="HIP is not usable"):
        memory.copy(bytearray(64), device_view, 64)
    with pytest.raises(DriverUnavailableError, match="HIP is not usable"):
        memory.DeviceBuffer(64)
    # host to host needs no GPU runtime at all
    dst = bytearray(4)
    memory.copy(dst, b"rocm", 4)
    assert dst == b"rocm"


class _RocmDLPack:
    """A DLPack producer on a ROCm device (kDLROCM = 10), backed by a CPU tensor's real capsule."""

    def __init__(self, tensor: object, device_type: int) -> None:
        self.tensor, self.device_type = tensor, device_type

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.device_type, 0

    def __dlpack__(self, stream: object = None) -> object:
        return self.tensor.__dlpack__()


def test_dlpack_rocm_devices_are_device_and_pinned_memory() -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.arange(12, dtype=torch.int32)
    device = as_buffer(_RocmDLPack(tensor, 10))
    assert (device.kind, device.device, device.nbytes, device.ptr) == ("device", 0, 48, tensor.data_ptr())
    pinned = as_buffer(_RocmDLPack(tensor, 11))
    assert (pinned.kind, pinned.device) == ("pinned", None)


# --- hip-python against the stand-in runtime ----------------------------------------------------
@needs_hip_python
def test_hip_python_helpers_against_the_stand_in(fake_hip: Path) -> None:
    script = """
        import ctypes, json
        from pygds import hip, memory
        from pygds.errors import InvalidArgumentError
        out = dict(available=hip.hip_available(), count=hip.device_count(), current=hip.current_device())
        hip.set_device(1)
        out["after_set"] = hip.current_device()
        hip.set_device(0)
        dev = hip.mem_alloc(4096, 1)
        pinned = hip.mem_alloc_host(4096)
        host = ctypes.create_string_buffer(4096)
        out["kinds"] = [hip.pointer_kind(dev), hip.pointer_kind(pinned), hip.pointer_kind(ctypes.addressof(host))]
        out["current_after_alloc"] = hip.current_device()
        ctypes.memmove(pinned, b"hip-python" * 10, 100)
        hip.memcpy(dev, "device", pinned, "pinned", 100, device=1)
        back = ctypes.create_string_buffer(100)
        hip.memcpy(ctypes.addressof(back), "host", dev, "device", 100, stream=0)
        hip.stream_synchronize(0)
        out["roundtrip"] = back.raw == b"hip-python" * 10
        try:
            hip.set_device(7)
        except InvalidArgumentError as e:
            out["bad_device"] = str(e)
        try:
            hip.memcpy(1, "host", 2, "host", 1)
        except InvalidArgumentError as e:
            out["host_to_host"] = str(e)
        hip.mem_free(dev, 1); hip.mem_free_host(pinned)
        out["runtime"] = memory.gpu_runtime().__name__
        print(json.dumps(out))
    """
    out = run_py(script, hip_env(fake_hip, PYGDS_FAKE_HIP_DEVICES="2"))
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert (r["available"], r["count"], r["current"], r["after_set"]) == (True, 2, 0, 1)
    assert r["kinds"] == [["device", 1], ["pinned", None], ["host", None]]
    assert r["current_after_alloc"] == 0  # allocating on device 1 switched there and back
    assert r["roundtrip"] is True
    assert "HIP device 7 does not exist; this machine has 2 device(s)" in r["bad_device"]
    assert "use ctypes.memmove" in r["host_to_host"]
    assert r["runtime"] == "pygds.hip"


@needs_hip_python
def test_buffers_copies_and_the_posix_engine_use_hip(fake_hip: Path, tmp_path: Path) -> None:
    script = f"""
        import json, os
        import pygds
        from pygds import memory
        data = os.urandom(3 * 1024 * 1024 + 123)
        with memory.DeviceBuffer(len(data)) as dev, memory.PinnedBuffer(len(data)) as pinned:
            kinds = [memory.as_buffer(pygds.Pointer(p, 8)).kind for p in (dev.ptr, pinned.ptr)]
            dev.copy_from_host(data)
            with pygds.File({str(tmp_path / "dev.bin")!r}, "w", engine="posix") as f:
                written = f.write(dev)
            memory.copy(pinned, bytes(len(data)), len(data))
            with pygds.File({str(tmp_path / "dev.bin")!r}, "r", engine="posix") as f:
                read = f.read(dev)
            memory.copy(pinned, dev, len(data))
            same = bytes(pinned.buffer) == data
        print(json.dumps(dict(kinds=kinds, written=written, read=read, same=same,
                              on_disk=open({str(tmp_path / "dev.bin")!r}, "rb").read() == data)))
    """
    out = run_py(script, hip_env(fake_hip))
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["kinds"] == ["device", "pinned"]
    assert r["written"] == r["read"] == 3 * 1024 * 1024 + 123
    assert r["same"] is True and r["on_disk"] is True

