#!/bin/bash
# One device call: the store-level A/B of checksum strategies, then the CPU plugin benchmark.
export PYTHONPATH=.
PY=/opt/torch/.venv/bin/python3
[ -x $PY ] || PY=python3
{
nproc
echo "== ab T=4"; T=4 timeout 90 $PY .exp/ab_piece.py 2>&1
echo "== ab T=8"; T=8 timeout 90 $PY .exp/ab_piece.py 2>&1
} > $OUT/probe.txt
cat $OUT/probe.txt
timeout 200 $PY benchmarks/gpu_check.py --out $OUT/check --only ${ONLY:-bench-plugin-cpu} --budget 190
