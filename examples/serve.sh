#!/usr/bin/env bash
# Start vLLM with LMCache and the pygds GDS backend plugin (the documentation's setup example).
# Prerequisites: a GPU, vllm, lmcache and pygds (pip install "pygds[lmcache,cuda13]"), access to
# meta-llama/Llama-3.1-8B-Instruct (export HF_TOKEN=...), and the cache directory:
#   mkdir -p /mnt/gds/cache
set -euo pipefail
cd "$(dirname "$0")"

# Configuration file (gds-backend.yaml in this folder). Check it first: every problem is named
# with its fix (pygds cache check-config gds-backend.yaml does the same).
python -c 'import sys; from lmcache_plugin.config import check_config; p = check_config("gds-backend.yaml"); print(*p, sep="\n"); sys.exit(bool(p))'

# If you don't want to use a config file, uncomment the environment variables below and comment
# out LMCACHE_CONFIG_FILE. LMCACHE_EXTRA_CONFIG must carry the plugin's registration: LMCache
# 0.5.x replaces a file's whole extra_config with it, so a variable holding only
# '{"use_cufile": false}' would unload the plugin. Add "use_cufile": false to it to force the
# POSIX fallback, or "use_hipfile": true for AMD hipFile. (LMCACHE_GDS_PATH works too, but also
# starts LMCache's built-in GdsBackend on the same directory; the plugin warns about that.)
# LMCACHE_LOCAL_CPU=False \
# LMCACHE_CHUNK_SIZE=256 \
# LMCACHE_CUFILE_BUFFER_SIZE=8192 \
# LMCACHE_STORAGE_PLUGINS=gds \
# LMCACHE_EXTRA_CONFIG='{"storage_plugin.gds.module_path": "lmcache_plugin.backend", "storage_plugin.gds.class_name": "GdsPluginBackend", "storage_plugin.gds.gds_path": "/mnt/gds/cache"}' \
LMCACHE_CONFIG_FILE="gds-backend.yaml" \
vllm serve \
    meta-llama/Llama-3.1-8B-Instruct \
    --max-model-len 65536 \
    --gpu-memory-utilization 0.85 \
    --kv-transfer-config \
    '{"kv_connector":"LMCacheConnectorV1", "kv_role":"kv_both"}'
