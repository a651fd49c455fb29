"""A multi-path GPU-Direct-Storage KV-cache backend for LMCache, built on pygds.

`store.KVStore` is the KV store (its parts: `index`, `scan`, `entries`, `claims`, `capacity`,
`publish`, `reader`, `counters`, over `layout` and `format`); it knows nothing of LMCache.
`backend` is the thin in-process LMCache adapter. `commands` adds `pygds cache` and `pygds demo`
through entry points, so pygds itself never imports this package.
"""
