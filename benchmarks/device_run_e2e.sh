#!/bin/bash
# The end-to-end table on the GPU, built there (the libraries do not fit the carry): Llama-2-7B dims, fp16,
# W4A16, BCQ 3/4-bit (four builds in parallel processes), then decode b=1/16/64 and prefill 512 of each and of
# HF transformers fp16 eager in one process (e2e.json), and a torch.profiler table of the W4A16 decode step
# built without PDL (with PDL a kernel's time includes its wait on the previous one).
# Usage (device machine, repo root): source .devbundle/setup.sh && bash benchmarks/device_run_e2e.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
for scheme in fp16 w4a16-g128 bcq3-g128 bcq4-g128; do
  python benchmarks/e2e_llama.py build e2e_libs --schemes "$scheme" > "/tmp/build_$scheme.log" 2>&1 &
done
python benchmarks/e2e_llama.py build e2e_libs_nopdl --schemes w4a16-g128 --no-pdl > /tmp/build_nopdl.log 2>&1 &
wait
tail -qn 1 /tmp/build_*.log
python benchmarks/e2e_llama.py time e2e_libs "$OUT/e2e.json" 2>&1 | grep -v Warning | tee "$OUT/e2e.log"
python benchmarks/e2e_llama.py profile e2e_libs_nopdl w4a16-g128 "$OUT/profile_w4a16_b1.txt" --batch 1 > /dev/null 2>&1
head -25 "$OUT/profile_w4a16_b1.txt"
