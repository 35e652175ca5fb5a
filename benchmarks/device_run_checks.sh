#!/bin/bash
# One device run that checks everything on the GPU: every gpu-marked test file (in parallel processes; the
# compilers run on the CPU cores), then the end-to-end Llama-2-7B-dims timings (alone on the GPU).
# Prepare here (CPU): python benchmarks/e2e_llama.py build e2e_libs && tar -cJf e2e_libs.tar.xz e2e_libs
# Usage (device machine, after `source .devbundle/setup.sh`): bash benchmarks/device_run_checks.sh
[ -d e2e_libs ] || tar -xJf e2e_libs.tar.xz
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
run() {  # name, pytest arguments...
  local name=$1; shift
  python -m pytest -q -p no:cacheprovider -m gpu "$@" > "$OUT/pytest_$name.txt" 2>&1
}
run w4a16_a tests/test_w4a16_gpu.py -k "w4a16-g128" &
run w4a16_b tests/test_w4a16_gpu.py -k "not w4a16-g128" &
run w4a8 tests/test_w4a8_gpu.py &
run models tests/test_llama_gpu.py tests/test_onnx_cuda.py tests/test_gqsa_gpu.py tests/test_bcq_lut_op.py &
wait
for f in "$OUT"/pytest_*.txt; do echo "== $f"; grep -E "passed|failed|error" "$f" | tail -n 2; done
grep -h -E "^FAILED|^ERROR" "$OUT"/pytest_*.txt | head -40
python benchmarks/e2e_llama.py time e2e_libs "$OUT/e2e.json" 2>&1 | grep -v Warning | tee "$OUT/e2e.log"
python benchmarks/e2e_llama.py profile e2e_libs w4a16-g128 "$OUT/profile_w4a16_b1.txt" --batch 1 > /dev/null 2>&1
head -22 "$OUT/profile_w4a16_b1.txt" | cut -c1-100,150-185
