#!/bin/bash
# W4A16 calibration variants of SmolLM2-135M on the GPU (benchmarks/smollm2_perplexity.py --device cuda), one
# process per variant in parallel. Needs the GGUF (in two parts: /tmp/acc/gguf.part0 from an earlier call on the
# same machine, .acc_dev/gguf.part1), the gguf wheel and the token ids (.acc_dev/tokens.npz, --export-inputs).
set -u
OUT=${OUT:-/tmp/acc_out}
RES=$OUT/res
mkdir -p "$RES"
part0=/tmp/acc/gguf.part0
[ -f "$part0" ] || part0=.acc_a/gguf.part0
[ -f "$part0" ] || { echo "missing gguf.part0 (the first call's file is gone)"; exit 3; }
cat "$part0" .acc_dev/gguf.part1 > /tmp/model.gguf || exit 3
md5sum /tmp/model.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .acc_dev/gguf-*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
nvidia-smi -L
run() {  # name, then the benchmark's arguments
  local name=$1; shift
  timeout "${LIMIT:-380}" python3 benchmarks/smollm2_perplexity.py --device cuda --gguf /tmp/model.gguf \
    --inputs .acc_dev/tokens.npz --json "$RES/$name.json" "$@" > "$RES/$name.log" 2>&1
  echo "$name exit $? after $SECONDS s: $(grep -a 'perplexity' "$RES/$name.log" | tr '\n' ' ')"
}
A=wiki-awq+clip+gptq+ao
run base --methods fp $A-asym --cal-windows 32 &
run seq32 --methods $A+seq-asym --cal-windows 32 &
run tseq32 --methods $A+tseq-asym --cal-windows 32 &
run tseq64 --methods $A+tseq-asym --cal-windows 64 &
run tseq128 --methods $A+tseq-asym --cal-windows 128 &
run base128 --methods $A-asym --cal-windows 128 &
run oawq128 --methods wiki-awq+oawq+clip+gptq+ao+tseq-asym --cal-windows 128 &
run damp128 --methods $A+tseq-asym --cal-windows 128 --damping 0.1 &
wait
tar czf "$OUT/res.tgz" -C "$OUT" res && rm -rf "$RES"
