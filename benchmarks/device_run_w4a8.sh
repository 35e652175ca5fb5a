#!/bin/bash
# One device run for issue 4 (W4A8/W8A8): GPU tests (5 pytest processes in the background) while the benchmark's
# kernels build in parallel, then the benchmark timings once the tests are done. Logs and w4a8.json go to $OUT.
# Usage (device machine, repo root): source .devbundle/setup.sh && bash benchmarks/device_run_w4a8.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
T=tests/test_w4a8_gpu.py
pids=()
for sel in k4096n4096 k576n1536 k1024n1040 k11008n4096 "outlier or inf"; do
  log="$OUT/pytest_${sel// /_}.txt"
  timeout 300 python -m pytest -q -p no:cacheprovider "$T" -k "$sel" > "$log" 2>&1 &
  pids+=($!)
done
timeout 200 python benchmarks/bench_w4a8.py build /tmp/w4a8_built --jobs 8 2>&1 | tee "$OUT/bench_build.txt"
for pid in "${pids[@]}"; do wait "$pid"; done
tail -n 4 "$OUT"/pytest_*.txt
cat "$OUT"/pytest_*.txt > "$OUT/pytest.txt" && rm "$OUT"/pytest_*.txt  # the device returns at most 8 files
timeout 240 python benchmarks/bench_w4a8.py time /tmp/w4a8_built --out "$OUT" 2>&1 | tee "$OUT/bench.txt"
