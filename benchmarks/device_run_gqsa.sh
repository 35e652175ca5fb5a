#!/bin/bash
# One device run for GQSA (issue 5): GPU tests in the background (4 pytest processes, builds in parallel) and the
# benchmark (kernels built in parallel, then timed) -> $OUT. Usage (device, after `source .devbundle/setup.sh`):
#   bash benchmarks/device_run_gqsa.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
python -m pytest -q -p no:cacheprovider --collect-only tests/test_gqsa_gpu.py 2>/dev/null | grep '::' > "$OUT/gpu_tests.txt"
pids=()
for shard in 0 1 2 3; do
  python -m pytest -q -p no:cacheprovider $(awk -v s=$shard 'NR % 4 == s' "$OUT/gpu_tests.txt") \
    > "$OUT/pytest_$shard.txt" 2>&1 &
  pids+=($!)
done
python benchmarks/bench_gqsa.py --jobs 12 --out "$OUT/results" 2>&1 | tee "$OUT/bench.log"
for pid in "${pids[@]}"; do wait "$pid"; done
tail -n 5 "$OUT"/pytest_*.txt
