export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv > "$OUT/gpu.txt" 2>&1
B="timeout 240 python benchmarks/e2e_llama.py build"
$B e2e_libs --schemes w4a16-g128 > /tmp/b1.log 2>&1 &
$B e2e_libs --schemes fp16 > /tmp/b2.log 2>&1 &
T="timeout 250 python -m pytest -q -p no:cacheprovider -m gpu"
$T tests/test_decode_attention_gpu.py > "$OUT/pytest_attention.txt" 2>&1 &
$T tests/test_llama_gpu.py > "$OUT/pytest_llama.txt" 2>&1 &
$T tests/test_llama_w4a8.py > "$OUT/pytest_w4a8.txt" 2>&1 &
wait
echo "phase1 $SECONDS s"; tail -qn 1 /tmp/b1.log /tmp/b2.log
for f in "$OUT"/pytest_*.txt; do echo "== $f"; tail -n 1 "$f"; done
grep -h -E "^FAILED|^ERROR" "$OUT"/pytest_*.txt | head -20
timeout 100 python benchmarks/bench_decode_attention.py "$OUT/attention.json" 2>&1 | grep -v Warning | tail -n 20
echo "phase2 $SECONDS s"
timeout 90 python benchmarks/e2e_llama.py decode e2e_libs "$OUT/e2e_decode.json" 2>&1 | grep -v Warning | tail -n 4
echo "done $SECONDS s"
