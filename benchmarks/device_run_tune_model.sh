#!/bin/bash
# One device run for `lowbit-tvm tune --model` (issue 7): tune SmolLM2-135M W4A16's non-low-bit tasks on the GPU,
# build the graph with and without the database, and time single-token decode (decode_one) and batch-16 decode
# per step both ways (random weights in the kernels' layouts: speed does not depend on their values).
# Usage (device machine, after `source .devbundle/setup.sh`): bash benchmarks/device_run_tune_model.sh [TRIALS] [TUNE_S]
# Writes $OUT/tune.log, build_*.log, decode.json, gpu.txt and sm_90_db.tar.gz (the pruned database).
TRIALS=${1:-16}
TUNE_S=${2:-170}
W=$(mktemp -d)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1

# build.py NAME DATABASE: the W4A16 graph for sm_90 into $W/NAME.so and its parameter spec $W/NAME.json
cat > "$W/build.py" <<'EOF'
import json, os, sys, time
from pathlib import Path
from lowbit_tvm.codegen import export_library
from lowbit_tvm.kernel import default_target
from lowbit_tvm.models.builder import build
from lowbit_tvm.models.config import get_preset
from lowbit_tvm.models.recipe import ModelRecipe

name, database = sys.argv[1], (None if sys.argv[2] == "none" else sys.argv[2])
out = Path(os.environ["W"])
start = time.time()
recipe = ModelRecipe(get_preset("smollm2-135m"), "w4a16-g128", "float16")
executable, model, names = build(recipe, default_target("sm_90"), database=database, report=print)
export_library(executable, out / f"{name}.so", overwrite=True)
shapes = dict(model.named_parameters())
spec = [[n, [int(d) for d in shapes[n].shape], shapes[n].dtype] for n in names]
(out / f"{name}.json").write_text(json.dumps({"recipe": recipe.to_json(), "params": spec}))
print(f"built {name} in {time.time() - start:.0f} s", flush=True)
EOF
export W
# The untuned build runs beside the tuning (MetaSchedule's builders and nvcc use the other cores).
python3 "$W/build.py" untuned none > "$OUT/build_untuned.log" 2>&1 &
untuned=$!
# The database is merged after every task: a tuning cut off by the timeout keeps the tasks it finished.
timeout "$TUNE_S" python3 -m lowbit_tvm.cli tune --model smollm2-135m --scheme w4a16-g128 --target cuda \
  --trials "$TRIALS" --tasks '[!w]*' --out "$W/tl" > "$OUT/tune.log" 2>&1
echo "tune exit $?" >> "$OUT/tune.log"
grep -v Warning "$OUT/tune.log" | tail -n 25
timeout 270 python3 "$W/build.py" tuned "$W/tl/sm_90" > "$OUT/build_tuned.log" 2>&1
wait $untuned
tail -n 3 "$OUT"/build_*.log
tar -czf "$OUT/sm_90_db.tar.gz" -C "$W/tl" sm_90 && ls -l "$W/tl/sm_90"
python3 - "$OUT/decode.json" <<'EOF'
import json, os, sys
from pathlib import Path
import torch
sys.path.insert(0, "benchmarks")
from e2e_llama import _random_params, _time_ms
from lowbit_tvm.codegen import load_library
from lowbit_tvm.models.engine import LlamaEngine
from lowbit_tvm.models.recipe import ModelRecipe

work = Path(os.environ["W"])
engines, steps = {}, {}
for name in ("untuned", "tuned"):
    record = json.loads((work / f"{name}.json").read_text())
    torch.manual_seed(0)
    engines[name] = LlamaEngine(load_library(work / f"{name}.so"), ModelRecipe.from_json(record["recipe"]),
                                _random_params(record["params"], torch.device("cuda")), torch.device("cuda"))
    steps[name] = {b: engines[name].decode_step_fn(b, 128) for b in (1, 16)}
result = {"gpu": torch.cuda.get_device_name(), "model": "smollm2-135m", "scheme": "w4a16-g128", "context": 128}
first = {name: steps[name][1]().float() for name in steps}  # the same first decode_one step of both libraries
diff = (first["tuned"] - first["untuned"]).norm() / first["untuned"].norm()
result["decode_one_logits_rel_diff"] = float(diff)
print(f"decode_one logits, tuned vs untuned: relative difference {float(diff):.2e}", flush=True)
for rnd in range(3):  # interleaved rounds: clocks drift between the two libraries otherwise
    for name in steps:
        for batch, step in steps[name].items():
            result.setdefault(f"{name}_b{batch}_ms", []).append(_time_ms(step, repeat=100))
for key in [k for k in result if k.endswith("_ms")]:
    result[key] = sorted(result[key])[1]
    print(f"{key}: {result[key]:.4f} ms/step", flush=True)
Path(sys.argv[1]).write_text(json.dumps(result, indent=1))
EOF
