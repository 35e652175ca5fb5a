#!/bin/bash
# One device run for the BCQ LUT-GEMM work: GPU tests (4 pytest processes in the background, builds in
# parallel), timings of the prebuilt kernels, and an ncu profile of one kernel. Results go to $OUT.
# Prepare here (CPU, ~20 s per kernel): python benchmarks/prebuild_bcq.py bcq_prebuilt && tar -cJf
#   bcq_prebuilt.tar.xz bcq_prebuilt && mv bcq_prebuilt elsewhere (the tarball keeps the run under 64 MiB).
# Usage (device machine, after `source .devbundle/setup.sh`): [NCU_ONLY="lib names"] bash benchmarks/device_run_bcq.sh
[ -d bcq_prebuilt ] || tar -xJf bcq_prebuilt.tar.xz
T=tests/test_bcq_lut_op.py::test_cuda_kernel_matches_float64
pids=()
for shape in 1-4096-4096 3-1024-2080 8-11008-256 1-11008-512; do
  python -m pytest -q -p no:cacheprovider "$T[$shape-3-128]" "$T[$shape-4-64]" "$T[$shape-2--1]" \
    > "$OUT/pytest_$shape.txt" 2>&1 &
  pids+=($!)
done
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
python benchmarks/time_bcq_lut.py --prebuilt bcq_prebuilt 2>&1 | tee "$OUT/bench.txt"
for ONLY in ${NCU_ONLY:-bcq3_g128_m1_n57344_k8192__w32_wp16_r64_t1_pf8}; do
  timeout 100 ncu -k regex:'^bcq.*_kernel$' --launch-skip 2 --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats --section InstructionStats --section SchedulerStats --section MemoryWorkloadAnalysis_Tables \
    python benchmarks/time_bcq_lut.py --prebuilt bcq_prebuilt --only "$ONLY" --profile > "$OUT/ncu_$ONLY.txt" 2>&1
done
grep -h -E "bcq|Throughput|Busy|Occupancy|Registers|Warp Cycles|Stall|Issued Ipc|Shared Memory|Bank|Eligible|No Eligible|Duration|Block Limit|L1/TEX Hit|DRAM" "$OUT"/ncu_*.txt | head -120
for pid in "${pids[@]}"; do wait "$pid"; done
tail -n 3 "$OUT"/pytest_*.txt
