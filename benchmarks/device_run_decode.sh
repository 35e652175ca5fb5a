#!/bin/bash
# One device run for single-token decode: GPU tests of the GEMV on tensor-core weights and of the Llama graph
# (CUDA graphs, decode_one), the M=1 kernel comparison, and the end-to-end Llama-2-7B-dims timings.
# Prepare here (CPU): python benchmarks/e2e_llama.py build e2e_libs && tar -cJf e2e_libs.tar.xz e2e_libs
# Usage (device machine, after `source .devbundle/setup.sh`): bash benchmarks/device_run_decode.sh
[ -d e2e_libs ] || tar -xJf e2e_libs.tar.xz
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
python -m pytest -q -p no:cacheprovider tests/test_w4a16_gpu.py -k tensor_core_weights > "$OUT/pytest_gemv.txt" 2>&1 &
p1=$!
python -m pytest -q -p no:cacheprovider tests/test_llama_gpu.py > "$OUT/pytest_llama.txt" 2>&1 &
p2=$!
wait $p1 $p2
tail -n 3 "$OUT"/pytest_*.txt
python benchmarks/bench_mma_gemv.py "$OUT/mma_gemv.json" --jobs 12 2>&1 | grep -v Warning | tee "$OUT/mma_gemv.log"
python benchmarks/e2e_llama.py time e2e_libs "$OUT/e2e.json" 2>&1 | grep -v Warning | tee "$OUT/e2e.log"
python benchmarks/e2e_llama.py profile e2e_libs w4a16-g128 "$OUT/profile_w4a16_b1.txt" --batch 1 > /dev/null 2>&1
head -30 "$OUT/profile_w4a16_b1.txt"
