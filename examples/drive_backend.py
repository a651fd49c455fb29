"""Drive the pygds GDS backend plugin without vLLM: build an LMCache config, let LMCache load the
plugin, store chunks of random KV data, load them back and compare.

    python examples/drive_backend.py --path /tmp/kvcache --chunks 16
    python examples/drive_backend.py --path /mnt/nvme0/cache,/mnt/nvme1/cache --device cuda:1

With a CUDA destination (a GPU and a CUDA build of torch) the chunks live in GPU memory
registered with cuFile; with "cpu" (the default where there is no GPU) in host memory, through
the POSIX engine.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

try:
    import torch
    from lmcache.utils import CacheEngineKey, start_loop_in_thread_with_exceptions
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.memory_management import MemoryFormat
    from lmcache.v1.metadata import LMCacheMetadata
    from lmcache.v1.storage_backend import storage_plugin_launcher
except ModuleNotFoundError as exc:  # pygds alone does not install LMCache: say how, not a traceback
    raise SystemExit(f"drive_backend.py needs LMCache and torch ({exc}): install the lmcache extra, "
                     "pip install 'pygds[lmcache]' (from a checkout: pip install -e '.[lmcache]')") from None

# Llama-3.1-8B-like: 32 layers, 8 KV heads of 128, bf16 -> one 256-token chunk is 32 MiB.
LAYERS, HEADS, HEAD_DIM = 32, 8, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="/tmp/pygds-kvcache", help="cache directory or comma list")
    parser.add_argument("--chunks", type=int, default=8, help="how many chunks to store and load")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per chunk (chunk_size)")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu",
                        help='destination device as LMCache passes it: "cuda:N" or "cpu"')
    parser.add_argument("--buffer-mib", type=int, default=0,
                        help="buffer size in MiB (default: room for all chunks)")
    args = parser.parse_args()

    chunk_shape = torch.Size([2, LAYERS, args.tokens, HEADS * HEAD_DIM])
    chunk_bytes = chunk_shape.numel() * 2
    buffer_mib = args.buffer_mib or -(-(chunk_bytes + 4096) * args.chunks // (1 << 20)) + 1
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=args.tokens, local_cpu=False, max_local_cpu_size=1, storage_plugins=["gds"],
        extra_config={
            "storage_plugin.gds.module_path": "lmcache_plugin.backend",
            "storage_plugin.gds.class_name": "GdsPluginBackend",
            "storage_plugin.gds.gds_path": args.path,
            "storage_plugin.gds.cufile_buffer_size": buffer_mib,
        })
    metadata = LMCacheMetadata(model_name="example/llama-8b", world_size=1, local_world_size=1, worker_id=0,
                               local_worker_id=0, kv_dtype=torch.bfloat16,
                               kv_shape=(LAYERS, 2, args.tokens, HEADS, HEAD_DIM), chunk_size=args.tokens)

    loop = asyncio.new_event_loop()  # LMCache runs its event loop in a thread of its own
    thread = threading.Thread(target=start_loop_in_thread_with_exceptions, args=(loop,), daemon=True)
    thread.start()
    backends: dict = {}
    storage_plugin_launcher(config, metadata, loop, None, args.device, backends)
    if "gds" not in backends:
        raise SystemExit("LMCache did not load the plugin; its log above says why")
    gds = backends["gds"]
    try:
        stamp = time.time_ns()
        keys = [CacheEngineKey(metadata.model_name, 1, 0, stamp + i, torch.bfloat16) for i in range(args.chunks)]
        objs, expected = [], []
        for i in range(args.chunks):
            obj = gds.allocate(chunk_shape, torch.bfloat16, fmt=MemoryFormat.KV_2LTD)
            obj.tensor.copy_(torch.randn(chunk_shape, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16))
            expected.append(obj.tensor.cpu().clone())
            objs.append(obj)

        start = time.perf_counter()
        futures = gds.batched_submit_put_task(keys, objs)
        stored = sum(f.result() for f in futures)
        put_s = time.perf_counter() - start
        for obj in objs:
            obj.ref_count_down()

        start = time.perf_counter()
        loaded = gds.batched_get_blocking(keys)
        get_s = time.perf_counter() - start
        exact = sum(o is not None and torch.equal(o.tensor.cpu(), e) for o, e in zip(loaded, expected))
        for obj in loaded:
            if obj is not None:
                obj.ref_count_down()

        total_mib = args.chunks * chunk_bytes / (1 << 20)
        print(f"engine {gds.engine}, writing to {gds.store.write_path} ({gds.plan.reason})")
        print(f"stored {stored}/{args.chunks} chunks of {chunk_bytes >> 20} MiB in {put_s:.3f} s "
              f"({total_mib / put_s:.0f} MiB/s)")
        print(f"loaded {exact}/{args.chunks} chunks byte-exact in {get_s:.3f} s ({total_mib / get_s:.0f} MiB/s)")
        print("counters:", {k: v for k, v in gds.stats().items() if type(v) is int and v})
        if exact != args.chunks:
            raise SystemExit(1)
    finally:
        gds.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


if __name__ == "__main__":
    main()
