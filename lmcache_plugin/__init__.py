"""A multi-path GPU-Direct-Storage KV-cache backend for LMCache, built on pygds.

`store.KVStore` is the KV store (layout, header format, index, capacity); it knows nothing of
LMCache. `backend` is the thin LMCache adapter and the only module that imports `lmcache`.
"""
