#!/bin/bash
# Decode attention on the GPU: our split-KV kernel vs TVM's paged decode kernel at Llama-2-7B dims (batch 1 and
# 16, contexts 128/512/2048; JSON in $OUT/attention.json), then the GPU tests of our kernel (vs float64 and
# TVM's kernel, and inside the Llama graph) and of the Llama graph (which now takes our kernel on CUDA).
# Nothing to prepare on the CPU: the kernels and the test models are compiled here.
# Usage (device machine, after `source .devbundle/setup.sh`): bash benchmarks/device_run_attention.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
python benchmarks/bench_decode_attention.py "$OUT/attention.json" --sweep 2>&1 | grep -v Warning | tee "$OUT/attention.log"
python -m pytest -q -p no:cacheprovider -m gpu tests/test_decode_attention_gpu.py > "$OUT/pytest_attention.txt" 2>&1 &
p1=$!
python -m pytest -q -p no:cacheprovider -m gpu tests/test_llama_gpu.py > "$OUT/pytest_llama.txt" 2>&1 &
p2=$!
wait $p1 $p2
for f in "$OUT"/pytest_*.txt; do echo "== $f"; grep -E "passed|failed|error" "$f" | tail -n 2; done
grep -h -E "^FAILED|^ERROR|Error" "$OUT"/pytest_*.txt | head -40
