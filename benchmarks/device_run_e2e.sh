#!/bin/bash
# The end-to-end table on the GPU, built there (the libraries do not fit the carry): Llama-2-7B dims, fp16,
# W4A16, BCQ 3/4-bit (four builds in parallel processes), then decode b=1/16/64 and prefill 512 of each and of
# HF transformers fp16 eager in one process (e2e.json, written after each engine), and decode-step rounds of
# fp16 and W4A16 (b=1/16, 3 rounds: e2e_decode.json).
# Usage (device machine, repo root): source .devbundle/setup.sh && bash benchmarks/device_run_e2e.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
for scheme in fp16 w4a16-g128 bcq3-g128 bcq4-g128; do
  timeout 300 python benchmarks/e2e_llama.py build e2e_libs --schemes "$scheme" > "/tmp/build_$scheme.log" 2>&1 &
done
wait
tail -qn 1 /tmp/build_*.log
echo "built after $SECONDS s"
timeout 200 python benchmarks/e2e_llama.py time e2e_libs "$OUT/e2e.json" 2>&1 | grep -v Warning | tee "$OUT/e2e.log"
echo "timed after $SECONDS s"
mkdir -p /tmp/decode_libs && mv e2e_libs/bcq* /tmp/ 2>/dev/null
timeout 120 python benchmarks/e2e_llama.py decode e2e_libs "$OUT/e2e_decode.json" 2>&1 | grep -v Warning | tail -n 4
echo "done after $SECONDS s"
