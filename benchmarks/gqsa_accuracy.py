"""GQSA on the linear layers of SmolLM2-135M: magnitude vs activation-aware (Wanda) group pruning with int4,
against dense int4 and dense int3 (issue 5).

Usage: python benchmarks/gqsa_accuracy.py [--group 32] [--layers N] [--tokens 512] [--calib-tokens 2048]
       [--refit-layers 2] [--damping 0.1] [--out benchmarks/results/gqsa_accuracy.json]

For every q/k/v/o/gate/up/down weight W (the GGUF's Q4_1 weights dequantized to float32, the reference):

- ``int4``: symmetric int4, one fp16 scale per ``--group`` weights (GQSA at sparsity 0);
- ``int3-sym`` / ``int3-asym``: round-to-nearest 3-bit at the same group (``bcq_accuracy.rtn``);
- ``{magnitude,wanda}-{30,50}-{row,layer}``: ``lowbit_tvm.quant.gqsa`` pruning at that sparsity, balanced per
  row or over the layer, then int4 of the kept groups;
- ``wanda-{30,50}-row-refit`` (only on the first ``--refit-layers`` layers, not on ``down_proj``: the solves cost
  ``O(kept^3)`` per row, minutes per layer on a 2-core CPU): the same mask, kept weights re-fit by least squares to
  the dense output on the calibration inputs (``refit_kept``, block-wise reconstruction, damping ``--damping``)
  before int4; reported in ``refit`` beside ``wanda-*-row`` on the same layers.

Calibration inputs (Wanda's channel norms, the refit) are each linear's inputs while the fp32 model reads the
first ``--calib-tokens`` tokens of ``lee.cor``; the output error ``||X (W - W_hat)^T||_F / ||X W^T||_F`` is measured on
*other* text: the inputs on the first ``--tokens`` tokens of ``lee_background.cor`` (held out). Writes a JSON
summary (means per layer kind and overall, actual densities) and prints a markdown table.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bcq_accuracy import KINDS, layer_inputs, linear_weights, rtn  # noqa: E402  pylint: disable=wrong-import-position

from lowbit_tvm.models.corpus import calibration_text, lee_corpus_text  # noqa: E402
from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # noqa: E402
from lowbit_tvm.quant.gqsa import (  # noqa: E402
    GQSAScheme, gqsa_dequantize, gqsa_quantize, keep_mask, refit_kept,
)

DEFAULT_OUT = Path(__file__).parent / "results" / "gqsa_accuracy.json"
SPARSITIES = (0.3, 0.5)


def methods(group, damping):
    """Method name -> f(weight, calibration inputs) -> (reconstruction, kept fraction of groups)."""
    fns = {
        "int4": lambda w, x: (gqsa_dequantize(gqsa_quantize(w, GQSAScheme(group, 0.0))), 1.0),
        "int3-sym": lambda w, x: (rtn(w, 3, group, True), 1.0),
        "int3-asym": lambda w, x: (rtn(w, 3, group, False), 1.0),
    }

    def pruned(scheme):
        def run(w, x):
            qw = gqsa_quantize(w, scheme, x)
            return gqsa_dequantize(qw), qw.density
        return run

    def refit(scheme):
        def run(w, x):
            mask = keep_mask(w, scheme, x)
            qw = gqsa_quantize(refit_kept(w, mask, x, group, damping), scheme, mask=mask)
            return gqsa_dequantize(qw), qw.density
        return run

    for sparsity in SPARSITIES:
        pct = round(100 * sparsity)
        for saliency in ("magnitude", "wanda"):
            for balance in ("row", "layer"):
                fns[f"{saliency}-{pct}-{balance}"] = pruned(GQSAScheme(group, sparsity, balance, saliency))
        fns[f"wanda-{pct}-row-refit"] = refit(GQSAScheme(group, sparsity, "row", "wanda"))
    return fns


def refit_applies(name, refit_layers):
    """Whether the refit methods run on linear ``name`` (see the module docstring)."""
    parts = name.split(".")
    return int(parts[2]) < refit_layers and parts[4] != "down_proj"


def measure(weights, calibration, held_out, fns, refit_layers):
    """Per layer and method: weight error, held-out output error, kept fraction."""
    results = {}
    for name, w in weights.items():
        w64 = w.astype(np.float64)
        x, x_eval = calibration[name], held_out[name]
        ref = np.linalg.norm(x_eval @ w64.T)
        row = {}
        for method, fn in fns.items():
            if method.endswith("refit") and not refit_applies(name, refit_layers):
                continue
            approx, density = fn(w, x)
            diff = w64 - approx.astype(np.float64)
            row[method] = {"weight": round(float(np.linalg.norm(diff) / np.linalg.norm(w64)), 5),
                           "output": round(float(np.linalg.norm(x_eval @ diff.T) / ref), 5),
                           "density": round(float(density), 5)}
        results[name] = row
        print(f"{name}: " + ", ".join(f"{m} {v['output']:.3f}" for m, v in row.items()), flush=True)
    return results


def summarize(per_layer, fns):
    """Means per layer kind and overall (over the layers where a method ran)."""
    summary = {}
    for kind in KINDS + ["all"]:
        names = [n for n in per_layer if kind == "all" or n.split(".")[4] == kind]
        if not names:
            continue
        summary[kind] = {m: {metric: float(np.mean([per_layer[n][m][metric] for n in names]))
                             for metric in ("weight", "output", "density")}
                         for m in fns if all(m in per_layer[n] for n in names)}
    return summary


def markdown(summary):
    """Rows: methods; columns: mean output error per layer kind and overall, mean density."""
    kinds = [kind for kind in KINDS if kind in summary]
    lines = ["| method | density | " + " | ".join(kinds) + " | **all** |", "|---" * (len(kinds) + 3) + "|"]
    for m in summary["all"]:
        cells = [f"{summary[kind][m]['output']:.4f}" for kind in kinds + ["all"]]
        lines.append(f"| {m} | {summary['all'][m]['density']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dumps(record) -> str:
    """``record`` as JSON: indented, except one line per layer in ``per_layer`` (keeps the file small)."""
    head = {k: v for k, v in record.items() if k != "per_layer"}
    rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(row, separators=(',', ':'))}"
                       for name, row in record["per_layer"].items())
    return json.dumps(head, indent=1, allow_nan=False)[:-2] + ',\n "per_layer": {\n' + rows + "\n }\n}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--layers", type=int, default=None, help="only the first N decoder layers")
    parser.add_argument("--group", type=int, default=32, help="GQSA / quantization group (16, 32, 64, 128)")
    parser.add_argument("--tokens", type=int, default=512, help="held-out tokens (lee_background.cor)")
    parser.add_argument("--calib-tokens", type=int, default=2048, help="calibration tokens (lee.cor)")
    parser.add_argument("--refit-layers", type=int, default=2, help="layers that also get the refit methods")
    parser.add_argument("--damping", type=float, default=0.1, help="refit damping (times the mean diagonal)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    start = time.time()
    model = load_gguf_llama(find_smollm2_gguf())
    layers = args.layers or model.config["num_hidden_layers"]
    weights = linear_weights(model, layers)
    calibration = layer_inputs(model, calibration_text(), args.calib_tokens)
    held_out = layer_inputs(model, lee_corpus_text(), args.tokens)
    fns = methods(args.group, args.damping)
    per_layer = measure(weights, calibration, held_out, fns, args.refit_layers)
    plain = {m: f for m, f in fns.items() if not m.endswith("refit")}
    summary = summarize(per_layer, plain)
    subset = {n: r for n, r in per_layer.items() if refit_applies(n, args.refit_layers)}
    refit = summarize(subset, [m for m in fns if m.startswith("wanda") and "-row" in m]) if subset else {}
    record = {
        "model": model.path.name, "group": args.group, "layers": layers, "tokens": args.tokens,
        "calibration_tokens": args.calib_tokens, "refit_layers": args.refit_layers, "damping": args.damping,
        "calibration": "lee.cor (first tokens)", "evaluation": "lee_background.cor (first tokens, held out)",
        "note": "weights are the GGUF's Q4_1 (4-bit, group 32) weights dequantized to float32",
        "seconds": round(time.time() - start, 1), "summary": summary, "refit": refit, "per_layer": per_layer,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(record))
    print(f"\nrelative output error on {args.tokens} held-out tokens, group {args.group}, mean over {layers} layers\n")
    print(markdown(summary))
    if refit:
        print(f"\nrefit subset (layers < {args.refit_layers}, no down_proj)\n")
        print(markdown(refit))
    print(f"\nwrote {args.out} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
