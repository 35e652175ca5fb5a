#!/bin/bash
# The session's final device check: every gpu-marked test (parallel processes; compilers on the CPU cores),
# `lowbit-tvm bench` at M=128/256 (static and dynamic M), and the W4A8 quantize kernel's thread configs.
# Usage (device machine, repo root): source .devbundle/setup.sh && bash benchmarks/device_run_final.sh
export PYTHONUNBUFFERED=1
LOGS=/tmp/final_logs && mkdir -p $LOGS
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$LOGS/gpu.txt" 2>&1
run() {  # name, pytest arguments...
  local name=$1; shift
  python -m pytest -q -p no:cacheprovider -m gpu "$@" > "$LOGS/pytest_$name.txt" 2>&1
}
run w4a16_a tests/test_w4a16_gpu.py -k "w4a16-g128" &
run w4a16_b tests/test_w4a16_gpu.py -k "not w4a16-g128" &
run w4a8 tests/test_w4a8_gpu.py &
run models tests/test_llama_gpu.py tests/test_onnx_cuda.py tests/test_gqsa_gpu.py tests/test_bcq_lut_op.py &
run new tests/test_bcq_model.py tests/test_w4a16_tensor_core_large_m.py tests/test_model_tuning.py &
wait
for f in $LOGS/gpu.txt $LOGS/pytest_*.txt; do echo "== $f"; cat "$f"; done > "$OUT/pytest.txt"
for f in $LOGS/pytest_*.txt; do echo "== $f"; grep -E "passed|failed|error" "$f" | tail -n 1; done
grep -h -E "^FAILED|^ERROR" $LOGS/pytest_*.txt | head -20
python -c "from lowbit_tvm.cli import main; main(['bench', '--batches', '128', '256'])" 2>&1 | grep -v Warning | tee "$OUT/bench_128_256.log"
cp benchmarks/results/nvidia_h100_80gb_hbm3/w4a16.json benchmarks/results/nvidia_h100_80gb_hbm3/w4a16.png "$OUT/"
python benchmarks/time_act_quant.py "$OUT/act_quant.json" --jobs 14 2>&1 | grep -v Warning | tee "$OUT/act_quant.log"
