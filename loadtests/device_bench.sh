#!/bin/bash
# On the GPU machine (device tool), from the tree's root: the H200 bench on the configs as rendered, the naive
# baseline resumed from its saved run (loadtests/results/bench_gpu_h200_naive_run.json, measured once on an H200),
# or run in the same call with NAIVE=live (~80 s more: do that on any other card).
#
#   loadtests/device_bench.sh NAME LEVEL...      e.g. loadtests/device_bench.sh B_now 1 48
#   loadtests/device_bench.sh full 1 48 64 48 96   # issue 14's table in one call: text at 1, 48 twice ("48",
#       "48#2"), 64 and 96, clients 8 sessions a process; ~480 s (call 11's 5 levels: 351 s), ~560 s with
#       NAIVE=live, near the 600 s a call may run: leave 96 to another call then
#
# Writes $OUT/NAME.log (unbuffered: a level cut by a timeout still leaves its lines) and $OUT/NAME/ (BENCHMARKS.md,
# JSON); prints the optimized table. Staging:
# `python -m loadtests.device stage` here (BENCHMARKS.md, "GPU: one H200").
set -u
source .device/activate.sh
export TRITON_HOME=/tmp/triton
name=$1; shift
mkdir -p "$OUT/$name/runs"
[ "${NAIVE:-saved}" = live ] || cp loadtests/results/bench_gpu_h200_naive_run.json "$OUT/$name/runs/gpu_naive.json"
python3 -u -m loadtests.bench_gpu --preset base --avatar build/device/avatar.jpg --concurrency "$@" \
  --naive-concurrency 1 --turns 2 --skip-stages --resume --out "$OUT/$name" > "$OUT/$name.log" 2>&1
echo "== $name rc=$?"; sed -n '/^## End to end, optimized/,$p' "$OUT/$name/BENCHMARKS.md" | grep "^| " | head -40
rm -rf "$OUT/$name/runs" "$OUT/$name/gpu" "$OUT/$name"/*.png
