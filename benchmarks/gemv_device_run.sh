#!/bin/bash
# One device run for the M=1 GEMV work: time the sweep libraries (vs cuBLAS fp16 and tinygemm), profile the
# default with ncu, run the GEMV GPU tests. Usage (repo root, after `source .devbundle/setup.sh`):
#   bash benchmarks/gemv_device_run.sh build/gemv_sweep.tar.xz
set -u
mkdir -p /tmp/gemv && rm -rf /tmp/gemv; mkdir -p /tmp/gemv && tar -xJf "$1" -C /tmp/gemv
for d in /tmp/gemv/*/; do
  python3 benchmarks/sweep_w4a16.py time "$d" > "$OUT/$(basename "$d").log" 2>&1
  cp "$d/timed.json" "$OUT/$(basename "$d").json"
  python3 - "$d/timed.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
bad = [r for r in rows if r["rel_err"] >= 1e-2]
rows.sort(key=lambda r: r["us"])
show = [r for r in rows if r["config"]["reduction"] == "flat"] + [r for r in rows if r["config"]["reduction"] == "word"][:8]
for r in show:
    c = r["config"]
    print(f"K={r['k']} N={r['n']} {c['reduction']} tx={c['tx']} ty={c['ty']} vec={c['vec']} rows={c['rows']}: {r['us']:.1f} us "
          f"x{r['fp16_us'] / r['us']:.2f} fp16 ({r['fp16_us']:.1f}) x{r['tinygemm_us'] / r['us']:.2f} tiny ({r['tinygemm_us']:.1f}) err {r['rel_err']:.1e}")
print("configs", len(rows), "bad", len(bad), [(b["config"], b["rel_err"]) for b in bad][:3])
PY
done
[ -n "${NCU:-}" ] && ncu -k regex:w4a16 --launch-skip 4 --launch-count 1 --section SpeedOfLight --section InstructionStats \
  --section Occupancy --section LaunchStats python3 benchmarks/profile_w4a16.py 1 57344 8192 > "$OUT/ncu.txt" 2>&1
[ -n "${NCU:-}" ] && grep -E "w4a16_|Throughput|Executed Ipc|Executed Instructions |Registers Per|Achieved Occupancy|Duration" "$OUT/ncu.txt" | head -24
python3 -m pytest -q -m gpu tests/test_w4a16_gpu.py -k "test_matches_float64 and ([1-w4a16 or [3-w4a16)" 2>&1 | tail -8
