#!/bin/bash
# Issue 2's small-batch W4A16 targets on the device (run from the repo root after `source .devbundle/setup.sh`).
#   benchmarks/device_run_smallm.sh sweep   # build the "smallm" sweep sets in parallel, check each vs float64, time
#   benchmarks/device_run_smallm.sh final   # W4A16 GPU tests, the benchmark at M = 1, 16, 32, 64 (one process),
#                                           # the L2-flush check and the M=1 load-variant sweep
set -u
export PYTHONUNBUFFERED=1
LOGS=/tmp/smallm
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1

sweep() {
  # shape, batches, chunks: one folder (and index) per build process
  local jobs=$LOGS/jobs.txt
  : > "$jobs"
  add() { for i in $(seq 0 $(($3 - 1))); do echo "$1 $2 $i/$3" >> "$jobs"; done; }
  add 11008x4096 1 3
  add 11008x4096 16 3
  add 11008x4096 32 2
  add 11008x4096 64 2
  for shape in 4096x4096 4096x12288 4096x22016 8192x57344 28672x8192; do add $shape 1 1; done
  add 4096x22016 16 1
  add 28672x8192 16 1
  add 28672x8192 32 1
  add 8192x57344 32 1
  xargs -P 16 -L 1 bash -c 'd='"$LOGS"'/sw_${0}_${1}_${2/\//of}; python3 benchmarks/sweep_w4a16.py build $d $0 $1 --set smallm --chunk $2 > $d.log 2>&1 || echo "build failed: $0 $1 $2"' < "$jobs"
  tail -n 2 "$LOGS"/sw_*.log > "$OUT/build.log"
  python3 benchmarks/sweep_w4a16.py time $(ls -d "$LOGS"/sw_*/) > "$OUT/time.log" 2>&1
  cp "$(ls -d "$LOGS"/sw_*/ | head -n 1)/timed.json" "$OUT/timed.json"
  tail -n 40 "$OUT/time.log"
}

final() {
  local jobs=$LOGS/jobs.txt
  : > "$jobs"
  for shape in 4096x4096 4096x12288 4096x22016 11008x4096 8192x57344 28672x8192; do echo "$shape 1 0/1" >> "$jobs"; done
  xargs -P 6 -L 1 bash -c 'd='"$LOGS"'/sw_${0}_${1}; python3 benchmarks/sweep_w4a16.py build $d $0 $1 --set smallm > $d.log 2>&1 || echo "build failed: $0 $1"' < "$jobs" &
  python3 -m pytest -q -p no:cacheprovider -n 10 -m gpu tests/test_w4a16_gpu.py > "$OUT/pytest.txt" 2>&1
  wait
  tail -n 5 "$OUT/pytest.txt"
  python3 -c "from lowbit_tvm.cli import main; main(['bench', '--batches', '1', '16', '32', '64'])" \
    > "$OUT/w4a16.log" 2>&1
  cat "$OUT/w4a16.log"
  cp benchmarks/results/nvidia_h100_80gb_hbm3/w4a16.json benchmarks/results/nvidia_h100_80gb_hbm3/w4a16.png "$OUT/"
  python3 benchmarks/bench_mma_gemv.py "$OUT/l2_check.json" --l2-check > "$OUT/l2_check.log" 2>&1
  tail -n 3 "$OUT/l2_check.log"
  python3 benchmarks/sweep_w4a16.py time $(ls -d "$LOGS"/sw_*/) > "$OUT/time.log" 2>&1
  cp "$(ls -d "$LOGS"/sw_*/ | head -n 1)/timed.json" "$OUT/timed.json"
  tail -n 8 "$OUT/time.log"
}

"$1"
