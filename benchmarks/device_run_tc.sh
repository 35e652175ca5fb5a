#!/bin/bash
# Device runs for the W4A16 tensor-core kernel at M >= 128 (the H100 machine, 16 cores). Usage, from the repo root
# after `source .devbundle/setup.sh`:
#   bash benchmarks/device_run_tc.sh sweep   # sweep configs at M=128/256 on the six Llama shapes + an ncu profile
#   bash benchmarks/device_run_tc.sh final   # the W4A16 GPU tests, then `lowbit-tvm bench` (all shapes and M)
# Builds run in parallel processes (CPU); timings run alone on the GPU afterwards. Logs go to $OUT.
set -u
SHAPES="4096x4096 4096x12288 4096x22016 11008x4096 8192x57344 28672x8192"
export PYTHONUNBUFFERED=1
LOGS=/tmp/tc_logs  # pytest logs, gathered into $OUT/pytest.txt (at most 8 files come back)
mkdir -p $LOGS
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$LOGS/gpu.txt" 2>&1

sweep() {
  local work=/tmp/tc_sweep chunks=2
  rm -rf $work && mkdir -p $work
  for shape in $SHAPES; do
    for m in 128 256; do
      for ((c = 0; c < chunks; c++)); do
        python3 benchmarks/sweep_w4a16.py build "$work/${shape}_m${m}_$c" "$shape" "$m" --chunk "$c/$chunks" \
          > "$work/build_${shape}_m${m}_$c.log" 2>&1 &
      done
    done
  done
  wait
  date; tail -qn 1 $work/build_*.log | sort | uniq -c | sort -rn | head -5
  grep -l -iE "error|Traceback" $work/build_*.log | head -3 | xargs -r tail -n 5
  python3 benchmarks/sweep_w4a16.py time $(ls -d $work/*/ ) > "$OUT/sweep.log" 2>&1
  cp "$(ls -d $work/*/ | head -1)/timed.json" "$OUT/sweep_timed.json"
  cp $LOGS/gpu.txt "$OUT/"
  grep -A40 "best per workload" "$OUT/sweep.log"
  date
  # Where the time goes in the M=256 kernel of the largest shape (the dispatcher's default config).
  timeout 120 ncu -k regex:w4a16 --launch-skip 3 --launch-count 1 --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis --section SchedulerStats \
    python3 benchmarks/profile_w4a16.py 256 57344 8192 > "$OUT/ncu_m256.txt" 2>&1
  grep -E "Duration|Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Stall|Issued Ipc|Block Limit|Eligible" \
    "$OUT/ncu_m256.txt" | head -40
}

# Build every kernel `lowbit-tvm bench` times (one process per shape), so the bench itself only times.
prebuild() {
  mkdir -p /tmp/tc_pre
  for shape in $SHAPES; do
    python3 - "$shape" > "/tmp/tc_pre/build_$shape.log" 2>&1 <<'PY' &
import pickle, sys
from lowbit_tvm.bench import BATCHES
from lowbit_tvm.codegen import export_library
from lowbit_tvm.kernel import build, committed_database, default_target
from lowbit_tvm.ops.w4a16 import W4A16Op
from lowbit_tvm.quant import get_scheme

k, n = (int(v) for v in sys.argv[1].split("x"))
target, scheme = default_target(), get_scheme("w4a16-g128")
database = committed_database(target)
for m in [None, *BATCHES]:
    kernel = build(W4A16Op(n, k, scheme, m), target, database)
    stem = f"/tmp/tc_pre/{k}x{n}_{m}"
    export_library(kernel.module, stem + ".so", overwrite=True)
    meta = {key: value for key, value in vars(kernel).items() if key != "module"}
    pickle.dump((type(kernel), meta), open(stem + ".pkl", "wb"))
    print(m, kernel.rule, kernel.source, flush=True)
PY
  done
}

# The mma.sync ceiling of this GPU (what the tensor-core kernel is built on; cuBLAS uses wgmma).
mma_peak() {
  cat > /tmp/mma_peak.cu <<'CU'
// Peak of mma.sync.m16n8k16 (fp16 in, fp32 accumulate) on this GPU: registers only, 8 independent accumulators/warp.
#include <cstdio>
#include <cuda_runtime.h>
__global__ void peak(float* out, int iters) {
  unsigned a0 = threadIdx.x, a1 = a0 * 3, a2 = a0 * 5, a3 = a0 * 7, b0 = a0 * 11, b1 = a0 * 13;
  float acc[8][4] = {};
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                   : "+f"(acc[j][0]), "+f"(acc[j][1]), "+f"(acc[j][2]), "+f"(acc[j][3])
                   : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  float s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j][0] + acc[j][1] + acc[j][2] + acc[j][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
int main() {
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int iters = 4096;
  for (int warps : {4, 8, 16}) {
    int blocks = sms * 4, threads = 32 * warps;
    float* out; cudaMalloc(&out, sizeof(float) * blocks * threads);
    cudaEvent_t t0, t1; cudaEventCreate(&t0); cudaEventCreate(&t1);
    peak<<<blocks, threads>>>(out, iters);
    cudaEventRecord(t0);
    for (int r = 0; r < 5; ++r) peak<<<blocks, threads>>>(out, iters);
    cudaEventRecord(t1); cudaEventSynchronize(t1);
    float ms; cudaEventElapsedTime(&ms, t0, t1);
    cudaError_t err = cudaGetLastError();
    double flops = 5.0 * blocks * warps * iters * 8 * 2.0 * 16 * 8 * 16;
    printf("mma.sync m16n8k16 f32: %d warps/block x %d blocks: %.0f TFLOP/s (%s)\n", warps, blocks, flops / (ms * 1e-3) / 1e12,
           cudaGetErrorString(err));
    cudaFree(out);
  }
  return 0;
}
CU
  nvcc -arch=sm_90 -O3 -o /tmp/mma_peak /tmp/mma_peak.cu && /tmp/mma_peak
}

final() {
  local start=$SECONDS
  prebuild
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_w4a16_tensor_core_large_m.py > "$LOGS/pytest_large_m.txt" 2>&1 &
  local t=tests/test_w4a16_gpu.py
  python3 -m pytest -q -p no:cacheprovider -m gpu $t -k "w4a16-g128" > "$LOGS/pytest_w4a16_a.txt" 2>&1 &
  python3 -m pytest -q -p no:cacheprovider -m gpu $t -k "w4a16-g32-asym" > "$LOGS/pytest_w4a16_b.txt" 2>&1 &
  python3 -m pytest -q -p no:cacheprovider -m gpu $t -k "not w4a16-g128 and not w4a16-g32-asym" > "$LOGS/pytest_w4a16_c.txt" 2>&1 &
  wait
  date
  for f in $LOGS/gpu.txt $LOGS/pytest_*.txt; do echo "== $f"; cat "$f"; done > "$OUT/pytest.txt"
  for f in $LOGS/pytest_*.txt; do echo "== $f"; grep -E "passed|failed|error" "$f" | tail -n 2; done
  grep -h -E "^FAILED|^ERROR" $LOGS/pytest_*.txt | head -20
  tail -qn 3 /tmp/tc_pre/build_*.log
  mma_peak | tee "$OUT/mma_peak.log"
  # `lowbit-tvm bench` over the prebuilt libraries: kernel.build is looked up at call time.
  python3 - > "$OUT/w4a16.log" 2>&1 <<'PY'
import pickle
from pathlib import Path
import lowbit_tvm.kernel as kernel_module
from lowbit_tvm.bench import run_bench
from lowbit_tvm.codegen import load_library

def prebuilt(op, target, database="auto"):
    stem = f"/tmp/tc_pre/{op.k}x{op.n}_{op.m}"
    cls, meta = pickle.load(open(stem + ".pkl", "rb"))
    return cls(module=load_library(stem + ".so"), **meta)

kernel_module.build = prebuilt
run_bench(Path("benchmarks/results"))
PY
  cat "$OUT/w4a16.log"
  cp benchmarks/results/nvidia_h100_80gb_hbm3/w4a16.json benchmarks/results/nvidia_h100_80gb_hbm3/w4a16.png "$OUT/"
  # Stall reasons of the new default at M=256 on the largest shape, in whatever time is left.
  local left=$((440 - (SECONDS - start)))
  [ $left -gt 45 ] && timeout $left ncu -k regex:w4a16 --launch-skip 3 --launch-count 1 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio \
    python3 benchmarks/profile_w4a16.py 256 57344 8192 > "$OUT/ncu_m256.txt" 2>&1
  grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots|stalled_(barrier|long_score|short_score|math_pipe|mio|wait|not_sel|dispatch|no_inst)" \
    "$OUT/ncu_m256.txt" | head -24
}

"$1"
