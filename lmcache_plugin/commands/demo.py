"""`pygds demo`: the README's main job, a KV-chunk round trip through the plugin's store.

It stores `--chunks` KV chunks shaped like LMCache's for Llama-3.1-8B (bf16, [2, 32 layers,
tokens, 8 heads x 128]; 32 MiB for 256 tokens) in a cache directory through
`lmcache_plugin.store.KVStore`, reads them back, checks every byte, and says which engine ran,
why, and the write and read throughput. It picks the engine as the plugin does: GPU memory and
cuFile where a CUDA GPU and a GDS-capable path are there, host memory and POSIX otherwise.
Needs neither torch nor a GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import sys
import tempfile
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, Callable

import pygds
from pygds import cuda, fsinfo, memory
from pygds.cli import CommandError, UsageError
from pygds.cli.output import human_bytes, positive_int_arg, print_json, say
from pygds.cli.progress import Progress

from ..config import ConfigError, PluginSettings, plan_engine
from ..format import EntryHeader
from ..layout import fanout
from ..store import KVStore, StoreOptions

MODEL = "meta-llama/Llama-3.1-8B"
LAYERS, KV_HEADS, HEAD_DIM = 32, 8, 128
FMT_KV_2LTD = 1  # LMCache MemoryFormat.KV_2LTD: [2, layers, tokens, hidden]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="round-trip KV chunks through the LMCache plugin store and show engine and throughput",
        description="Store KV chunks shaped like LMCache's for Llama-3.1-8B through the lmcache_plugin KV store, "
                    "read them back, verify every byte, and report the engine that ran (and why) and the "
                    "write/read throughput. GPU memory and cuFile where present, host memory and POSIX otherwise.",
        epilog="Exit status: 0 verified, 1 a chunk failed to store or came back different, 2 bad arguments.")
    p.add_argument("--dir", metavar="D", help="cache directory (default: a temporary one, removed afterwards)")
    p.add_argument("--chunks", type=positive_int_arg, default=8, metavar="N", help="number of KV chunks (default 8)")
    p.add_argument("--tokens", type=positive_int_arg, default=256, metavar="N",
                   help="tokens per chunk (default 256: 32 MiB per chunk; 128 KiB per token)")
    p.add_argument("--engine", choices=pygds.ENGINES, default="auto", help="engine to ask for (default auto)")
    p.add_argument("--keep", action="store_true", help="leave the entries in --dir afterwards")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="force the progress bar on or off (default: on when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=run, parser=p)
    return p


def chunk_shape(tokens: int) -> tuple[int, int, int, int]:
    """LMCache's KV_2LTD chunk shape for Llama-3.1-8B: [K/V, layers, tokens, kv_heads * head_dim]."""
    return (2, LAYERS, tokens, KV_HEADS * HEAD_DIM)


def _plan_engine(directory: str, engine: str, device_memory: bool) -> tuple[str, str, str]:
    """(engine the store gets, data suffix, why), decided by the plugin's own rule."""
    settings = PluginSettings(paths=(directory,), engine=engine, engine_explicit=engine != "auto",
                              sources={"engine": "--engine"})
    fs = fsinfo.fs_type(directory)
    try:
        plan = plan_engine(settings, {directory: fs}, device_memory)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    return plan.engine, plan.data_suffix, f"{plan.reason} ({directory} is {fs})"


def _engine_used(directory: str, planned: str, plan_reason: str) -> tuple[str, str]:
    """Open a scratch file as the store will: the engine pygds really uses there, and why."""
    if planned == "posix":
        return "posix", plan_reason
    probe = os.path.join(directory, f".pygds-demo-probe-{os.getpid()}")
    try:
        with pygds.File(probe, "w", engine=planned) as f:
            used = f.engine
    finally:
        if os.path.exists(probe):
            os.unlink(probe)
    choice = pygds.choose_engine(planned)
    reason = f"{plan_reason}; pygds: {choice.reason}"
    if used != choice.name:
        reason += f"; opening a file there fell back to {used} (see the warning above)"
    return used, reason


class _Chunks:
    """Source and destination buffers: device memory with a CUDA GPU, else host memory."""

    def __init__(self, count: int, nbytes: int, device: bool) -> None:
        self.device = device
        self.expected = [random.Random(i).randbytes(nbytes) for i in range(count)]
        if device:
            self.src: list[Any] = []
            self.dst: list[Any] = []
            for data in self.expected:
                buf = memory.DeviceBuffer(nbytes)
                buf.copy_from_host(data)
                self.src.append(buf)
                self.dst.append(memory.DeviceBuffer(nbytes))
        else:
            self.src = list(self.expected)
            self.dst = [bytearray(nbytes) for _ in range(count)]

    def read_back(self, i: int) -> bytes:
        if not self.device:
            return bytes(self.dst[i])
        host = bytearray(len(self.expected[i]))
        self.dst[i].copy_to_host(host)
        return bytes(host)

    def close(self) -> None:
        if self.device:
            for buf in self.src + self.dst:
                buf.close()


def _wait_all(futures: list[Future], progress: Progress, nbytes: int) -> list[bool]:
    for fut in futures:
        fut.add_done_callback(lambda _f: progress.update(nbytes))
    wait(futures)
    return [bool(f.result()) for f in futures]


@dataclass
class _Plan:
    """What the demo will do, known before any I/O, so its header can come first."""

    directory: str
    temporary: bool
    shape: tuple[int, int, int, int]
    header: EntryHeader
    memory: str
    engine: str
    suffix: str
    reason: str
    keys: list[str]
    hashes: list[int]

    @property
    def chunk_bytes(self) -> int:
        return self.header.nbytes


def _missing_dirs(directory: str, hashes: list[int]) -> list[str]:
    """`directory` and the fan-out levels of `hashes` below it that do not exist yet, deepest first."""
    wanted = set()
    path = directory
    while not os.path.exists(path):
        wanted.add(path)
        path = os.path.dirname(path)
    for h in hashes:
        first, second = fanout(h)
        wanted.update((os.path.join(directory, first), os.path.join(directory, first, second)))
    return sorted((d for d in wanted if not os.path.exists(d)), key=lambda d: d.count(os.sep), reverse=True)


def _remove_empty(dirs: list[str]) -> None:
    """Remove each directory that is empty, deepest first; one that holds anything stays."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass


def _chunk_hashes(count: int) -> list[int]:
    return [random.Random(1000 + i).getrandbits(62) for i in range(count)]


def _plan(directory: str, temporary: bool, hashes: list[int], args: argparse.Namespace) -> _Plan:
    shape = chunk_shape(args.tokens)
    device = memory.cuda_available()
    os.makedirs(directory, exist_ok=True)
    planned, suffix, reason = _plan_engine(directory, args.engine, device)
    if not device:
        reason += f"; no usable CUDA GPU: {cuda.check_driver().reason}"
    if args.engine != "auto" and planned != args.engine:
        reason = f"--engine {args.engine} overridden as the plugin would: {reason}"
    engine, reason = _engine_used(directory, planned, reason)
    return _Plan(directory=directory, temporary=temporary, shape=shape,
                 header=EntryHeader.single(shape, "BF16", FMT_KV_2LTD), memory="gpu" if device else "host",
                 engine=engine, suffix=suffix, reason=reason,
                 keys=[f"{MODEL}@1@0@{h:x}@bfloat16" for h in hashes], hashes=hashes)


def _phase(label: str, plan: _Plan, args: argparse.Namespace, submit: Callable[[str, int, Any], Future],
           buffers: list[Any],
           submitted: list[Future]) -> tuple[list[bool], float]:
    """Submit one operation per chunk and wait; (results, seconds). The bar's clock is the
    summary's, so the rate it ends on is the one the summary prints."""
    with Progress(plan.chunk_bytes * args.chunks, label, flag=args.progress) as bar:
        futures = []
        for key, h, buf in zip(plan.keys, plan.hashes, buffers):
            futures.append(submit(key, h, buf))
            submitted.append(futures[-1])
        results = _wait_all(futures, bar, plan.chunk_bytes)
        return results, bar.elapsed()


def _round_trip(plan: _Plan, args: argparse.Namespace) -> dict[str, Any]:
    chunks = _Chunks(args.chunks, plan.chunk_bytes, plan.memory == "gpu")
    submitted: list[Future] = []
    options = StoreOptions(paths=[plan.directory], engine=plan.engine, data_suffix=plan.suffix, scan=False)
    try:
        with KVStore(options) as store:
            try:
                for key, h in zip(plan.keys, plan.hashes):
                    store.remove(key, h)  # left by an earlier --keep run
                stored, write_s = _phase("demo write", plan, args,
                                         lambda k, h, src: store.submit_put(k, h, src, plan.header),
                                         chunks.src, submitted)
                if not all(stored):
                    raise CommandError(f"{stored.count(False)} of {args.chunks} chunks could not be stored in "
                                       f"{plan.directory} (the log above names the cause)")
                loaded, read_s = _phase("demo read", plan, args, store.submit_get_into, chunks.dst, submitted)
                verified = sum(ok and chunks.read_back(i) == chunks.expected[i] for i, ok in enumerate(loaded))
                stats = store.stats().as_dict()
            finally:
                wait(submitted)  # nothing may publish after the removal below
                if not args.keep:
                    for key, h in zip(plan.keys, plan.hashes):
                        store.remove(key, h)
    finally:
        chunks.close()
    total = plan.chunk_bytes * args.chunks
    return {
        "directory": plan.directory, "fs_type": fsinfo.fs_type(plan.directory), "chunks": args.chunks,
        "chunk_shape": list(plan.shape), "dtype": "BF16", "chunk_bytes": plan.chunk_bytes, "memory": plan.memory,
        "engine": {"requested": args.engine, "used": plan.engine, "reason": plan.reason},
        "write": {"bytes": total, "seconds": write_s, "gib_per_s": total / max(write_s, 1e-9) / (1 << 30)},
        "read": {"bytes": total, "seconds": read_s, "gib_per_s": total / max(read_s, 1e-9) / (1 << 30)},
        "verified": verified, "ok": verified == args.chunks, "store_stats": stats,
    }


def _print_header(plan: _Plan, args: argparse.Namespace) -> None:
    """What is about to run, before the work: a long run shows what it is doing from the start."""
    say(f"pygds demo: {args.chunks} KV chunks of {human_bytes(plan.chunk_bytes)} "
        f"({MODEL}, {args.tokens} tokens, bf16 {'x'.join(map(str, plan.shape))}) in {plan.directory} "
        f"({fsinfo.fs_type(plan.directory)}{', removed afterwards' if plan.temporary else ''})")
    say(f"engine: {plan.engine} with {plan.memory} memory -- {plan.reason}")
    sys.stdout.flush()


def _print_result(report: dict[str, Any]) -> None:
    for phase in ("write", "read"):
        r = report[phase]
        say(f"{phase:<5}  {human_bytes(r['bytes'])} in {r['seconds']:.3f} s = "
            f"{human_bytes(r['bytes'] / max(r['seconds'], 1e-9))}/s")
    say(f"verified {report['verified']}/{report['chunks']} chunks byte-exact" +
        ("" if report["ok"] else " -- MISMATCH"))
    say("(through the page cache, as a serving cache mostly runs; `pygds bench --drop-caches` measures the "
        "device)")


def run(args: argparse.Namespace) -> int:
    if args.keep and not args.dir:
        raise UsageError("--keep needs --dir: the default directory is temporary and removed afterwards")
    if args.dir and os.path.exists(args.dir) and not os.path.isdir(args.dir):
        raise UsageError(f"--dir {args.dir} exists and is not a directory")
    if args.engine == "hipfile" and importlib.util.find_spec("pygds.engines.hipfile") is None:
        raise CommandError("this pygds has no hipFile engine yet; use --engine auto, cufile or posix")
    temporary = args.dir is None
    directory = tempfile.mkdtemp(prefix="pygds-demo-") if temporary else os.path.abspath(args.dir)
    hashes = _chunk_hashes(args.chunks)
    new_dirs = [] if temporary else _missing_dirs(directory, hashes)  # removed again unless --keep
    try:
        plan = _plan(directory, temporary, hashes, args)
        if not args.json:
            _print_header(plan, args)
        report = _round_trip(plan, args)
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
        elif not args.keep:
            _remove_empty(new_dirs)
    if args.json:
        print_json(report)
    else:
        _print_result(report)
    return 0 if report["ok"] else 1
