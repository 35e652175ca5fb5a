#!/bin/bash
# Device run of the ONNX frontend (issue 6): the GPU tests of tests/test_onnx_cuda.py (ONNX models compiled for
# the local GPU, checked against onnxruntime and float64), each test in its own process, in parallel.
# Usage (device tool): source .devbundle/setup.sh && bash benchmarks/device_run_onnx.sh
OUT=${OUT:-/tmp/onnx_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import onnxruntime, onnx; print('onnxruntime', onnxruntime.__version__, 'onnx', onnx.__version__)" >> "$OUT/gpu.txt" 2>&1
pids=()
for test in test_gpu_quantized_model_matches_float64_and_onnxruntime test_gpu_matmul_nbits_matches_onnxruntime; do
  timeout 380 python3 -m pytest -q -m gpu "tests/test_onnx_cuda.py::$test" -p no:cacheprovider > "$OUT/$test.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
tail -n 3 "$OUT"/*.log
