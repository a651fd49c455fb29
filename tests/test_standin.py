"""The stand-in driver fixture does its job: the real libcufile and cuda-python run on it.

Every check runs in a subprocess under `standin.env()` and calls libcufile and the stand-in
with raw ctypes (only the few cufile.h structs needed are declared here), so these tests
prove the fixture, independently of pygds's own bindings.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from standin.build import Standin, find_libcufile

MIB = 1 << 20
CUFILE_COMPLETE = 0x10
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NO_DEVICE = 100

# Declarations shared by the scripts: cufile.h's structs with their offsets, and the prototypes.
PRELUDE = """
import ctypes, json, os, sys

class CUfileError(ctypes.Structure):
    _fields_ = [("err", ctypes.c_int), ("cu_err", ctypes.c_int)]

class CUfileDescr(ctypes.Structure):  # type at 0, handle union (holds a pointer) at 8, fs_ops at 16
    _fields_ = [("type", ctypes.c_int), ("fd", ctypes.c_void_p), ("fs_ops", ctypes.c_void_p)]

class BatchIO(ctypes.Structure):
    _fields_ = [("devPtr_base", ctypes.c_void_p), ("file_offset", ctypes.c_longlong),
                ("devPtr_offset", ctypes.c_longlong), ("size", ctypes.c_size_t)]

class CUfileIOParams(ctypes.Structure):
    _fields_ = [("mode", ctypes.c_int), ("batch", BatchIO), ("fh", ctypes.c_void_p),
                ("opcode", ctypes.c_int), ("cookie", ctypes.c_void_p)]

class CUfileIOEvents(ctypes.Structure):
    _fields_ = [("cookie", ctypes.c_void_p), ("status", ctypes.c_int), ("ret", ctypes.c_size_t)]

assert ctypes.sizeof(CUfileDescr) == 24 and CUfileDescr.fd.offset == 8
assert ctypes.sizeof(CUfileIOParams) == 64 and CUfileIOParams.fh.offset == 40
assert ctypes.sizeof(CUfileIOEvents) == 24

P, SZ, OFF = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_longlong
cf = ctypes.CDLL(LIBCUFILE)
for name, args in {
    "cuFileDriverOpen": [], "cuFileDriverClose_v2": [],
    "cuFileHandleRegister": [P, P], "cuFileBufRegister": [P, SZ, ctypes.c_int],
    "cuFileBufDeregister": [P], "cuFileBatchIOSetUp": [P, ctypes.c_uint],
    "cuFileBatchIOSubmit": [P, ctypes.c_uint, P, ctypes.c_uint],
    "cuFileBatchIOGetStatus": [P, ctypes.c_uint, P, P, P],
    "cuFileStreamRegister": [P, ctypes.c_uint], "cuFileStreamDeregister": [P],
    "cuFileReadAsync": [P, P, P, P, P, P, P],
}.items():
    getattr(cf, name).restype = CUfileError
    getattr(cf, name).argtypes = args
for name in ("cuFileRead", "cuFileWrite"):
    getattr(cf, name).restype = ctypes.c_ssize_t
    getattr(cf, name).argtypes = [P, P, SZ, OFF, OFF]
cf.cuFileHandleDeregister.argtypes = [P]
cf.cuFileBatchIODestroy.argtypes = [P]

cu = ctypes.CDLL("libcuda.so.1")  # the stand-in, first on LD_LIBRARY_PATH
DP = ctypes.c_ulonglong
cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(DP), SZ]
cu.cuMemFree_v2.argtypes = [DP]
cu.cuMemcpyHtoD_v2.argtypes = [DP, P, SZ]
cu.cuMemcpyDtoH_v2.argtypes = [P, DP, SZ]
cu.cuStreamCreate.argtypes = [ctypes.POINTER(P), ctypes.c_uint]
cu.cuStreamSynchronize.argtypes = [P]
cu.cuStreamDestroy_v2.argtypes = [P]

def ok(err, what):
    code = (err.err, err.cu_err) if isinstance(err, CUfileError) else err
    assert code in (0, (0, 0)), f"{what} failed: {code}"

def device_alloc(size):
    ptr = DP()
    ok(cu.cuInit(0), "cuInit")
    ok(cu.cuMemAlloc_v2(ctypes.byref(ptr), size), "cuMemAlloc_v2")
    return ptr

def device_bytes(ptr, size):
    out = ctypes.create_string_buffer(size)
    ok(cu.cuMemcpyDtoH_v2(out, ptr, size), "cuMemcpyDtoH_v2")
    return out.raw

def open_handle(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    descr, handle = CUfileDescr(1, fd, None), ctypes.c_void_p()  # CU_FILE_HANDLE_TYPE_OPAQUE_FD
    ok(cf.cuFileHandleRegister(ctypes.byref(handle), ctypes.byref(descr)), "cuFileHandleRegister")
    return fd, handle

def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


def script_text(body: str) -> str:
    """A script: the path of libcufile, PRELUDE, then body."""
    return f"LIBCUFILE = {str(find_libcufile())!r}\n{PRELUDE}\n{textwrap.dedent(body)}"


def run_script(standin: Standin, body: str, cwd: Path, timeout: float = 60, **env_args) -> dict:
    """Run body in a subprocess under the stand-in; return what it `report`ed."""
    cwd.mkdir(parents=True, exist_ok=True)
    script = script_text(body)
    done = subprocess.run([sys.executable, "-c", script], env=standin.env(**env_args), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"script failed with {done.returncode}\n--- stdout\n{done.stdout}"
                                  f"\n--- stderr\n{done.stderr}\n--- cufile.log\n{standin.log_text()}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"script reported nothing\n{done.stdout}\n{done.stderr}"
    return json.loads(lines[-1][len("RESULT "):])


def test_write_and_read_through_cufile_compat_mode(standin: Standin, tmp_path: Path) -> None:
    payload = os.urandom(MIB)
    (tmp_path / "payload").write_bytes(payload)
    target = tmp_path / "data.bin"  # on the temp file system (ext4 here: needs the udev record)
    cwd = tmp_path / "cwd"
    standin.clear_log()
    result = run_script(standin, f"""
        payload = open({str(tmp_path / "payload")!r}, "rb").read()
        ok(cf.cuFileDriverOpen(), "cuFileDriverOpen")
        fd, fh = open_handle({str(target)!r})
        src = device_alloc(len(payload))
        ok(cu.cuMemcpyHtoD_v2(src, payload, len(payload)), "cuMemcpyHtoD_v2")
        ok(cf.cuFileBufRegister(src.value, len(payload), 0), "cuFileBufRegister")
        written = cf.cuFileWrite(fh, src.value, len(payload), 4096, 0)
        os.fsync(fd)
        dst = device_alloc(len(payload))
        read = cf.cuFileRead(fh, dst.value, len(payload), 4096, 0)
        device_equal = device_bytes(dst, len(payload)) == payload
        host = ctypes.create_string_buffer(10000)  # pageable memory, unaligned offsets
        host_read = cf.cuFileRead(fh, ctypes.addressof(host), 5000, 4096 + 13, 7)
        host_equal = host.raw[7:5007] == payload[13:5013]
        ok(cf.cuFileBufDeregister(src.value), "cuFileBufDeregister")
        cf.cuFileHandleDeregister(fh)
        ok(cf.cuFileDriverClose_v2(), "cuFileDriverClose_v2")
        report(written=written, read=read, device_equal=device_equal, host_read=host_read,
               host_equal=host_equal)
    """, cwd)
    assert result["written"] == MIB
    assert target.read_bytes()[4096:] == payload
    assert result["read"] == MIB and result["device_equal"]
    assert result["host_read"] == 5000 and result["host_equal"]
    assert "running in compatible mode" in standin.log_text()
    assert not (cwd / "cufile.log").exists()


def test_device_memory_faults_when_the_host_touches_it(standin: Standin, tmp_path: Path) -> None:
    """Device pointers are not host memory: a caller that dereferences one crashes, as on a GPU."""
    script = script_text("""
        ptr = device_alloc(4096)
        print("allocated", flush=True)
        ctypes.string_at(ptr.value, 1)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=standin.env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert "allocated" in done.stdout, done.stderr
    assert done.returncode == -signal.SIGSEGV


def test_cuda_python_runs_on_the_standin(standin: Standin, tmp_path: Path) -> None:
    result = run_script(standin, """
        from cuda.bindings import driver as drv
        def val(ret):
            assert ret[0] == drv.CUresult.CUDA_SUCCESS, ret
            return ret[1] if len(ret) == 2 else ret[1:]
        assert drv.cuInit(0)[0] == drv.CUresult.CUDA_SUCCESS
        version = val(drv.cuDriverGetVersion())
        dev = val(drv.cuDeviceGet(0))
        ctx = val(drv.cuDevicePrimaryCtxRetain(dev))
        assert drv.cuCtxSetCurrent(ctx)[0] == drv.CUresult.CUDA_SUCCESS
        ptr = val(drv.cuMemAlloc(1 << 20))
        data = os.urandom(1 << 20)
        assert drv.cuMemcpyHtoD(ptr, data, len(data))[0] == drv.CUresult.CUDA_SUCCESS
        back = bytearray(len(data))
        assert drv.cuMemcpyDtoH(back, ptr, len(back))[0] == drv.CUresult.CUDA_SUCCESS
        kind = drv.CUpointer_attribute.CU_POINTER_ATTRIBUTE_MEMORY_TYPE
        device_type = val(drv.cuPointerGetAttribute(kind, ptr))
        pageable = ctypes.create_string_buffer(64)
        pageable_err = drv.cuPointerGetAttribute(kind, ctypes.addressof(pageable))[0]
        missing = drv.cuGetProcAddress(b"cuNoSuchFunction", 13000, 0)
        fn, status = ctypes.c_void_p(), ctypes.c_int(-1)  # cuda-python drops the status on error
        cu.cuGetProcAddress_v2(b"cuNoSuchFunction", ctypes.byref(fn), 13000, ctypes.c_uint64(0),
                               ctypes.byref(status))
        assert drv.cuMemFree(ptr)[0] == drv.CUresult.CUDA_SUCCESS
        assert drv.cuDevicePrimaryCtxRelease(dev)[0] == drv.CUresult.CUDA_SUCCESS
        report(version=version, round_trip=bytes(back) == data, device_type=int(device_type),
               pageable_err=int(pageable_err), missing_err=int(missing[0]),
               missing_status=status.value, missing_fn=fn.value)
    """, tmp_path)
    assert result["version"] == 13000
    assert result["round_trip"]
    assert result["device_type"] == 2  # CU_MEMORYTYPE_DEVICE
    assert result["pageable_err"] == CUDA_ERROR_INVALID_VALUE
    assert result["missing_err"] == 500  # CUDA_ERROR_NOT_FOUND
    assert result["missing_status"] == 1  # CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
    assert result["missing_fn"] is None


@pytest.mark.parametrize("devices", [0, 2])
def test_device_count_follows_the_environment(standin: Standin, tmp_path: Path,
                                              devices: int) -> None:
    result = run_script(standin, """
        init = cu.cuInit(0)
        count = ctypes.c_int(-1)
        count_err = cu.cuDeviceGetCount(ctypes.byref(count))
        report(init=init, count_err=count_err, count=count.value)
    """, tmp_path, devices=devices)
    if devices == 0:  # as a machine with the driver but no GPU: cuInit fails, nothing is initialised
        assert result == {"init": CUDA_ERROR_NO_DEVICE, "count_err": 3, "count": -1}
    else:
        assert result == {"init": 0, "count_err": 0, "count": devices}


def test_driver_open_never_returns_without_proc_modules(standin: Standin, tmp_path: Path) -> None:
    """The hazard pygds's guard exists for: libcufile spins forever when /proc/modules won't open."""
    script = script_text("""
        print("opening", flush=True)
        err = cf.cuFileDriverOpen()
        print("returned", err.err, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=standin.env(proc_modules=False),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = ""
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        first = proc.stdout.readline().strip() if ready else ""
        if first == "opening":
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert first == "opening", stderr


def test_batch_of_eight_reads_completes(standin: Standin, tmp_path: Path) -> None:
    payload = os.urandom(8 * MIB)
    target = tmp_path / "batch.bin"
    target.write_bytes(payload)
    result = run_script(standin, f"""
        ok(cf.cuFileDriverOpen(), "cuFileDriverOpen")
        fd, fh = open_handle({str(target)!r})
        buf = device_alloc(8 << 20)
        batch = ctypes.c_void_p()
        ok(cf.cuFileBatchIOSetUp(ctypes.byref(batch), 8), "cuFileBatchIOSetUp")
        params = (CUfileIOParams * 8)()
        for i, p in enumerate(params):
            p.mode = 1  # CUFILE_BATCH
            p.batch = BatchIO(buf.value, i << 20, i << 20, 1 << 20)
            p.fh, p.opcode, p.cookie = fh.value, 0, 100 + i  # CUFILE_READ
        ok(cf.cuFileBatchIOSubmit(batch, 8, params, 0), "cuFileBatchIOSubmit")
        events, done = (CUfileIOEvents * 8)(), []
        import time
        deadline = time.monotonic() + 30
        while len(done) < 8 and time.monotonic() < deadline:
            n = ctypes.c_uint(8 - len(done))
            ok(cf.cuFileBatchIOGetStatus(batch, 0, ctypes.byref(n), events, None), "GetStatus")
            done += [(events[k].cookie, events[k].status, events[k].ret) for k in range(n.value)]
        cf.cuFileBatchIODestroy(batch)
        equal = device_bytes(buf, 8 << 20) == open({str(target)!r}, "rb").read()
        ok(cf.cuFileDriverClose_v2(), "cuFileDriverClose_v2")
        report(done=sorted(done), equal=equal)
    """, tmp_path)
    assert result["done"] == [[100 + i, CUFILE_COMPLETE, MIB] for i in range(8)]
    assert result["equal"]


def test_read_async_reports_eio(standin: Standin, tmp_path: Path) -> None:
    """libcufile's stream-side copy is a CUDA kernel, which the stand-in cannot run: bytes = -EIO."""
    target = tmp_path / "async.bin"
    target.write_bytes(os.urandom(MIB))
    result = run_script(standin, f"""
        ok(cf.cuFileDriverOpen(), "cuFileDriverOpen")
        fd, fh = open_handle({str(target)!r})
        buf = device_alloc(1 << 20)
        stream = ctypes.c_void_p()
        ok(cu.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
        ok(cf.cuFileStreamRegister(stream, 0), "cuFileStreamRegister")
        size, file_off, buf_off = ctypes.c_size_t(1 << 20), ctypes.c_longlong(0), ctypes.c_longlong(0)
        done = ctypes.c_ssize_t(12345)
        err = cf.cuFileReadAsync(fh, buf.value, ctypes.byref(size), ctypes.byref(file_off),
                                 ctypes.byref(buf_off), ctypes.byref(done), stream)
        ok(cu.cuStreamSynchronize(stream), "cuStreamSynchronize")
        ok(cf.cuFileStreamDeregister(stream), "cuFileStreamDeregister")
        ok(cu.cuStreamDestroy_v2(stream), "cuStreamDestroy_v2")
        ok(cf.cuFileDriverClose_v2(), "cuFileDriverClose_v2")
        report(submit=[err.err, err.cu_err], done=done.value)
    """, tmp_path)
    assert result["submit"] == [0, 0]
    assert result["done"] == -5  # -EIO


def test_memcpy_batch_async_moves_every_pair(standin: Standin, tmp_path: Path) -> None:
    """CUDA 13's cuMemcpyBatchAsync_v2 copies host->device, device->host and device->device in
    one batch, with two attribute ranges; the bytes really arrive (KvikIO moves its bounce
    buffers this way)."""
    result = run_script(standin, """
        class MemLocation(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]
        class MemcpyAttributes(ctypes.Structure):
            _fields_ = [("srcAccessOrder", ctypes.c_int), ("srcLocHint", MemLocation),
                        ("dstLocHint", MemLocation), ("flags", ctypes.c_uint)]
        assert ctypes.sizeof(MemcpyAttributes) == 24
        batch = cu.cuMemcpyBatchAsync_v2
        batch.argtypes = [P, P, P, SZ, P, P, SZ, P]
        n = 3 * 4096 + 17
        payload, other = os.urandom(n), os.urandom(n)
        a, b = device_alloc(n), device_alloc(n)
        ok(cu.cuMemcpyHtoD_v2(b, other, n), "cuMemcpyHtoD_v2")
        host_out = ctypes.create_string_buffer(n)
        stream = ctypes.c_void_p()
        ok(cu.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
        # host -> a, b -> host, then a second attribute range: b -> a (offset 100, 4000 bytes)
        dsts = (DP * 3)(a.value, ctypes.addressof(host_out), a.value + 100)
        srcs = (DP * 3)(ctypes.cast(payload, ctypes.c_void_p).value, b.value, b.value + 200)
        sizes = (SZ * 3)(n, n, 4000)
        attrs = (MemcpyAttributes * 2)()
        attrs[0].srcAccessOrder, attrs[1].srcAccessOrder = 1, 3  # STREAM, ANY
        idxs = (SZ * 2)(0, 2)
        err = batch(dsts, srcs, sizes, 3, attrs, idxs, 2, stream)
        ok(cu.cuStreamSynchronize(stream), "cuStreamSynchronize")
        expected = payload[:100] + other[200:4200] + payload[4100:]
        report(err=err, device=device_bytes(a, n) == expected, host=host_out.raw == other)
    """, tmp_path)
    assert result == {"err": 0, "device": True, "host": True}


def test_memcpy_batch_async_refuses_bad_batches_whole(standin: Standin, tmp_path: Path) -> None:
    """Every batch cuda.h calls invalid returns CUDA_ERROR_INVALID_VALUE and moves no byte, even
    where its first copies are fine."""
    result = run_script(standin, """
        class MemcpyAttributes(ctypes.Structure):
            _fields_ = [("srcAccessOrder", ctypes.c_int), ("hints", ctypes.c_int * 4),
                        ("flags", ctypes.c_uint)]
        batch = cu.cuMemcpyBatchAsync_v2
        batch.argtypes = [P, P, P, SZ, P, P, SZ, P]
        n = 4096
        dev = device_alloc(n)
        ok(cu.cuMemcpyHtoD_v2(dev, bytes(n), n), "cuMemcpyHtoD_v2")
        source = os.urandom(n)
        src_ptr = ctypes.cast(source, ctypes.c_void_p).value
        stream = ctypes.c_void_p()
        ok(cu.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")

        def attempt(count=2, order=(1, 1), idxs=(0, 1), nattrs=2, stream=stream, second=n):
            dsts = (DP * 2)(dev.value, dev.value)
            srcs = (DP * 2)(src_ptr, src_ptr)
            sizes = (SZ * 2)(n, second)
            attrs = (MemcpyAttributes * 2)()
            attrs[0].srcAccessOrder, attrs[1].srcAccessOrder = order
            return batch(dsts, srcs, sizes, count, attrs, (SZ * 2)(*idxs), nattrs, stream)

        errors = {
            "null stream": attempt(stream=None),
            "no copies": attempt(count=0),
            "no attributes": attempt(nattrs=0),
            "first index not 0": attempt(idxs=(1, 1), nattrs=1),
            "indices not rising": attempt(idxs=(0, 0)),
            "index past count": attempt(count=1, idxs=(0, 1)),
            "invalid access order": attempt(order=(1, 0)),
            "copy past the allocation": attempt(second=n + 1),
        }
        untouched = device_bytes(dev, n) == bytes(n)
        good = attempt()
        report(errors=errors, untouched=untouched, good=good, copied=device_bytes(dev, n) == source)
    """, tmp_path)
    assert result["errors"] == {name: CUDA_ERROR_INVALID_VALUE for name in result["errors"]}
    assert len(result["errors"]) == 8
    assert result["untouched"]
    assert result["good"] == 0 and result["copied"]


def test_error_strings_and_lookups(standin: Standin, tmp_path: Path) -> None:
    """cuGetErrorString/cuGetErrorName describe known codes and refuse unknown ones, and
    cuGetProcAddress hands out the batch copy only to CUDA 13 callers."""
    result = run_script(standin, """
        text = ctypes.c_char_p()
        def describe(fn, code):
            text.value = None
            err = fn(code, ctypes.byref(text))
            return [err, text.value.decode() if text.value else None]
        fn, status = ctypes.c_void_p(), ctypes.c_int(-1)
        def proc(name, version):
            fn.value, status.value = None, -1
            err = cu.cuGetProcAddress_v2(name, ctypes.byref(fn), version, ctypes.c_uint64(0),
                                         ctypes.byref(status))
            return [err, status.value, fn.value is not None]
        report(string=describe(cu.cuGetErrorString, 1), name=describe(cu.cuGetErrorName, 100),
               unknown=describe(cu.cuGetErrorString, 123456),
               batch13=proc(b"cuMemcpyBatchAsync", 13000), batch12=proc(b"cuMemcpyBatchAsync", 12080))
    """, tmp_path)
    assert result["string"] == [0, "invalid argument"]
    assert result["name"] == [0, "CUDA_ERROR_NO_DEVICE"]
    assert result["unknown"] == [CUDA_ERROR_INVALID_VALUE, None]
    assert result["batch13"] == [0, 0, True]
    assert result["batch12"] == [500, 2, False]  # NOT_FOUND, VERSION_NOT_SUFFICIENT


def test_ctx_create_v3_and_v4_make_a_current_context(standin: Standin, tmp_path: Path) -> None:
    result = run_script(standin, """
        ok(cu.cuInit(0), "cuInit")
        primary, current = ctypes.c_void_p(), ctypes.c_void_p()
        ok(cu.cuCtxGetCurrent(ctypes.byref(primary)), "cuCtxGetCurrent")
        made = {}
        for name, args in (("cuCtxCreate_v3", (None, 0, 0, 0)), ("cuCtxCreate_v4", (None, 0, 0))):
            ctx = ctypes.c_void_p()
            err = getattr(cu, name)(ctypes.byref(ctx), *args)
            ok(cu.cuCtxGetCurrent(ctypes.byref(current)), "cuCtxGetCurrent")
            is_current = current.value == ctx.value
            destroyed = cu.cuCtxDestroy_v2(ctx)
            ok(cu.cuCtxGetCurrent(ctypes.byref(current)), "cuCtxGetCurrent")
            made[name] = [err, is_current, destroyed, current.value == primary.value]
        bad_device = cu.cuCtxCreate_v4(ctypes.byref(ctypes.c_void_p()), None, 0, 7)
        report(made=made, bad_device=bad_device)
    """, tmp_path)
    assert result["made"] == {"cuCtxCreate_v3": [0, True, 0, True], "cuCtxCreate_v4": [0, True, 0, True]}
    assert result["bad_device"] == 101  # CUDA_ERROR_INVALID_DEVICE


def test_kvikio_reads_and_writes_device_memory_on_the_standin(standin: Standin, tmp_path: Path) -> None:
    """KvikIO (its default compat mode: POSIX threads, pinned bounce buffers, batch copies to the
    device) runs on the stand-in and moves the right bytes both ways."""
    pytest.importorskip("kvikio", reason="KvikIO is not installed (pip install 'kvikio-cu13==26.10.*')")
    source = tmp_path / "source.bin"
    payload = os.urandom(9 * MIB + 4096)
    source.write_bytes(payload)
    result = run_script(standin, f"""
        import kvikio, kvikio.defaults
        from pygds.memory import DeviceBuffer
        kvikio.defaults.set({{"num_threads": 4, "task_size": 1 << 20}})
        n = {len(payload)}
        dev = DeviceBuffer(n)
        with kvikio.CuFile({str(source)!r}, "r") as f:
            read = f.read(dev)
        back = bytearray(n)
        dev.copy_to_host(back)
        with kvikio.CuFile({str(tmp_path / "copy.bin")!r}, "w") as f:
            written = f.write(dev)
        report(read=read, equal=bytes(back) == open({str(source)!r}, "rb").read(), written=written)
    """, tmp_path / "cwd")
    assert result == {"read": len(payload), "equal": True, "written": len(payload)}
    assert (tmp_path / "copy.bin").read_bytes() == payload
