#!/bin/bash
# One device run for W4A8 in the Relax Llama graph (models.w4a8_linear.AtomLinear): the gpu-marked tests of
# tests/test_llama_w4a8.py (the tiny ODD model with 32 calibrated int8 outlier channels, built for the local GPU:
# scoring of 1, 17 and 70 tokens vs the float64 reference of the quantized math, greedy decode and a batched
# decode step vs scoring), and the CPU sm_90 build test for comparison. Results go to $OUT.
# Usage (device machine, after `source .devbundle/setup.sh`): bash benchmarks/device_run_w4a8_graph.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
python -m pytest -q -p no:cacheprovider -m gpu tests/test_llama_w4a8.py > "$OUT/pytest_w4a8_graph.txt" 2>&1
echo "exit $?"
grep -E "passed|failed|error" "$OUT/pytest_w4a8_graph.txt" | tail -n 2
grep -E "^FAILED|^ERROR|Error" "$OUT/pytest_w4a8_graph.txt" | head -20
