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
#   CHUNK=4 loadtests/device_bench.sh B_chunk4 48 48   # talking_head llm_chunk_tokens for this run (configs/gpu.pbtxt
#       is edited in the device's copy of the tree; the rendered default stays as checked in)
#   PARAMS="audio_lead_s=0 frame_lead_s=1.0" loadtests/device_bench.sh A_lead0 48 48   # any talking_head parameters
#       for this run, the same way (CHUNK=N is PARAMS=llm_chunk_tokens=N)
#   BATCH="tts=16" loadtests/device_bench.sh B_tts16 48 48   # a stage's max_batch_size for this run (its gpu config,
#       preferred sizes above it dropped, the size itself added as one: the stage's graph calls and CUDA graphs follow
#       the served config)
#   INSTANCES="tts=2" loadtests/device_bench.sh C_tts2 48 48   # a stage's instance count for this run (its gpu config;
#       each instance is its own stub process, CUDA graphs and batch queue slot on the one GPU)
#   OVERLAY=build/device/overlays/X loadtests/device_bench.sh X 48 48   # a code variant for this run: each file under
#       the folder replaces the tree's file at the same path
#   GPU_TESTS=1 ...   # first the session runners' GPU tests (CUDA graph replays against the eager forward); a
#       failure stops here, before any figure is taken from code the CPU tests cannot reach
#
# Every file a knob edits or replaces is put back when the run ends (before fcc85cb the config edits stayed for the
# rest of the call: a second run in one call served the first run's knobs).
#
# Writes $OUT/NAME.log (unbuffered: a level cut by a timeout still leaves its lines) and $OUT/NAME/ (BENCHMARKS.md,
# JSON); prints the optimized table. Staging:
# `python -m loadtests.device stage` here (BENCHMARKS.md, "GPU: one H200").
set -u
source .device/activate.sh
export TRITON_HOME=/tmp/triton
saved=()
keep() {  # keep FILE's own text, to be put back when this run ends
  [ -e "$1.device-bench-orig" ] || { cp -p "$1" "$1.device-bench-orig" && saved+=("$1"); }
}
restore() { for f in "${saved[@]}"; do mv "$f.device-bench-orig" "$f"; done; }
trap restore EXIT
name=$1; shift
if [ "${GPU_TESTS:-0}" = 1 ]; then
  timeout 120 python3 -m pytest -p no:cacheprovider -q -m gpu tests/test_llm_sessions.py tests/test_asr_sessions.py \
    > "$OUT/$name.pytest.log" 2>&1
  rc=$?; tail -3 "$OUT/$name.pytest.log"; [ $rc = 0 ] || { echo "== $name: GPU tests failed (rc=$rc)"; exit 1; }
fi
for kv in ${CHUNK:+llm_chunk_tokens=$CHUNK} ${PARAMS:-}; do
  key=${kv%%=*}; value=${kv#*=}
  keep model_repository/talking_head/configs/gpu.pbtxt
  sed -i '/key: "'"$key"'"/,/}/s/string_value: "[^"]*"/string_value: "'"$value"'"/' \
    model_repository/talking_head/configs/gpu.pbtxt
  grep -A3 "\"$key\"" model_repository/talking_head/configs/gpu.pbtxt | grep -q "string_value: \"$value\"" \
    || { echo "== $name: talking_head $key not set to $value"; exit 1; }
  echo "== $name: talking_head $key=$value"
done
for kv in ${BATCH:-}; do
  model=${kv%%=*}; rows=${kv#*=}; cfg=model_repository/$model/configs/gpu.pbtxt
  keep "$cfg"
  sed -i "s/^max_batch_size: .*/max_batch_size: $rows/" "$cfg"
  awk -v rows="$rows" '
    /preferred_batch_size:/ { if ($2 + 0 < rows + 0) print; else if (!done) { print "  preferred_batch_size: " rows; done = 1 }; next }
    /max_queue_delay_microseconds:/ && !done { print "  preferred_batch_size: " rows; done = 1 }
    { print }' "$cfg" > "$cfg.tmp" && mv "$cfg.tmp" "$cfg"
  grep -q "^max_batch_size: $rows$" "$cfg" || { echo "== $name: $model max_batch_size not set to $rows"; exit 1; }
  echo "== $name: $model max_batch_size=$rows ($(grep -c preferred_batch_size "$cfg") preferred sizes)"
done
for kv in ${INSTANCES:-}; do
  model=${kv%%=*}; count=${kv#*=}; cfg=model_repository/$model/configs/gpu.pbtxt
  keep "$cfg"
  sed -i "/^instance_group {/,/^}/s/^  count: .*/  count: $count/" "$cfg"
  grep -A1 "^instance_group {" "$cfg" | grep -q "^  count: $count$" \
    || { echo "== $name: $model instance count not set to $count"; exit 1; }
  echo "== $name: $model instances=$count"
done
if [ -n "${OVERLAY:-}" ]; then
  while IFS= read -r f; do
    [ -f "$f" ] || { echo "== $name: overlay $OVERLAY/$f replaces no file of the tree"; exit 1; }
    keep "$f"; cp "$OVERLAY/$f" "$f"
    echo "== $name: $f from $OVERLAY"
  done < <(cd "$OVERLAY" && find . -type f | sed 's|^\./||')
fi
mkdir -p "$OUT/$name/runs"
[ "${NAIVE:-saved}" = live ] || cp loadtests/results/bench_gpu_h200_naive_run.json "$OUT/$name/runs/gpu_naive.json"
python3 -u -m loadtests.bench_gpu --preset base --avatar build/device/avatar.jpg --concurrency "$@" \
  --naive-concurrency 1 --turns 2 --skip-stages --resume --out "$OUT/$name" > "$OUT/$name.log" 2>&1
echo "== $name rc=$?"; sed -n '/^## End to end, optimized/,$p' "$OUT/$name/BENCHMARKS.md" | grep "^| " | head -70
rm -rf "$OUT/$name/runs" "$OUT/$name/gpu" "$OUT/$name"/*.png
