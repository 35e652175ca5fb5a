#!/bin/bash
# One device run for W4A4 (issue 4): the GPU tests (one pytest process per case, in parallel: each builds its
# layer) and one timing of W4A4 vs W4A8 at M=1024 on 4096x4096. Logs and the JSON go to $OUT.
# Usage (device machine, repo root): source .devbundle/setup.sh && bash benchmarks/device_run_w4a4.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
T=tests/test_w4a4_gpu.py
pids=()
i=0
for shape in k11008n4096o128 k576n1040o0; do
  for m in 1 16 128 1000; do
    timeout 170 python -m pytest -q -p no:cacheprovider "$T" -k "[$m-$shape]" > "$OUT/pytest_$i.txt" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
done
timeout 170 python benchmarks/time_w4a4.py --out "$OUT" > "$OUT/time.txt" 2>&1
for pid in "${pids[@]}"; do wait "$pid"; done
cat "$OUT"/pytest_*.txt > "$OUT/pytest.txt" && rm "$OUT"/pytest_*.txt  # the device returns at most 8 files
tail -n 3 "$OUT/pytest.txt"; tail -n 20 "$OUT/time.txt"
