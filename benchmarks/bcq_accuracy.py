"""BCQ vs round-to-nearest reconstruction error on the linear layers of SmolLM2-135M (issue 3).

Usage: python benchmarks/bcq_accuracy.py [--group 128] [--layers N] [--iterations 10] [--calib-tokens 512]
       [--out benchmarks/results/bcq_accuracy.json]

For every q/k/v/o/gate/up/down weight W (not the embedding), group size 128 along K (K = 576, the hidden
size, is zero-padded to 640 as our kernels need, so its last group holds 64 weights and 64 zeros; the
error is measured on the real weights only):

- ``bcq3`` / ``bcq4``: ``lowbit_tvm.quant.bcq_quantize`` (offset on, greedy init + alternating refinement);
- ``rtnB-asym`` / ``rtnB-sym`` for B = 3, 4: uniform round-to-nearest, a numpy reference written here
  (asym: min/max range, integer zero point; sym: scale max|w| / (2^(B-1) - 1), codes -2^(B-1) .. 2^(B-1)-1),
  scales rounded to float16 as they would be stored;
- ``int4-asym`` / ``int4-sym``: our W4A16 format (``lowbit_tvm.quant.quantize``, which keeps 0 inside the
  asymmetric range).

Metrics per layer: weight error ``||W - W_hat||_F / ||W||_F`` and, with calibration activations X (the inputs
of each linear while the fp32 model reads the first ``--calib-tokens`` tokens of the calibration text, not the
evaluation text), output error ``||X W^T - X W_hat^T||_F / ||X W^T||_F``.

Writes a JSON summary (per layer kind means, overall means, per layer values) and prints a markdown table.
Caveat: the only SmolLM2 weights reachable here are the GGUF's Q4_1 ones (4-bit, group 32, float scale and
min), so W already lies on a 4-bit grid; that favours 4-bit uniform grids over BCQ-4.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from lowbit_tvm.models.corpus import calibration_text
from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama
from lowbit_tvm.quant import BCQScheme, Int4Scheme, bcq_dequantize, bcq_quantize, dequantize, quantize

DEFAULT_GROUP = 128
KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TABLE_METHODS = ["bcq3", "rtn3-asym", "rtn3-sym", "bcq4", "rtn4-asym", "rtn4-sym", "int4-asym", "int4-sym"]
DEFAULT_OUT = Path(__file__).parent / "results" / "bcq_accuracy.json"


def rtn(w, bits, group, symmetric=False):
    """Uniform round-to-nearest group quantization of ``w`` [N, K]; returns the float64 reconstruction."""
    n, k = w.shape
    x = w.astype(np.float64).reshape(n, k // group, group)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = _fp16_scale(np.abs(x).max(axis=2, keepdims=True) / qmax)
        zero = 0.0
    else:
        qmin, qmax = 0, 2**bits - 1
        lo, hi = x.min(axis=2, keepdims=True), x.max(axis=2, keepdims=True)
        scale = _fp16_scale((hi - lo) / qmax)
        zero = np.clip(np.rint(-lo / scale), qmin, qmax)
    q = np.clip(np.rint(x / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).reshape(n, k)


def _fp16_scale(scale):
    """Scales as stored (float16), never zero."""
    scale = scale.astype(np.float16).astype(np.float64)
    return np.where(scale > 0, scale, 1.0)


def padded(fn, group):
    """``fn`` applied to ``w`` with K zero-padded to a multiple of ``group``; the padding is cut off again."""
    def run(w):
        pad = -w.shape[1] % group
        return fn(np.pad(w, ((0, 0), (0, pad))))[:, : w.shape[1]]
    return run


def methods(iterations, group):
    """Method name -> function mapping a float32 weight [N, K] to its reconstruction."""
    def bcq(bits):
        scheme = BCQScheme(bits, group, True)
        return padded(lambda w: bcq_dequantize(bcq_quantize(w, scheme, iterations)), group)

    def int4(symmetric):
        return padded(lambda w: dequantize(quantize(w, Int4Scheme(group, symmetric))), group)

    def uniform(bits, symmetric):
        return padded(lambda w: rtn(w, bits, group, symmetric), group)

    return {
        "bcq3": bcq(3), "bcq4": bcq(4),
        "rtn3-asym": uniform(3, False), "rtn3-sym": uniform(3, True),
        "rtn4-asym": uniform(4, False), "rtn4-sym": uniform(4, True),
        "int4-asym": int4(False), "int4-sym": int4(True),
    }


def linear_weights(model, layers):
    """HF name -> float32 weight [out, in] of every q/k/v/o/gate/up/down in the first ``layers`` layers."""
    out = {}
    for name, value in model.weights.items():
        parts = name.split(".")
        if len(parts) == 6 and parts[4] in KINDS and int(parts[2]) < layers:
            out[name] = value
    return out


def layer_inputs(model, text, tokens):
    """HF linear weight name -> its input activations ``[tokens, in]`` (float64) while the model reads ``text``."""
    from lowbit_tvm.models.hf_reference import linear_inputs

    ids = model.tokenizer().encode(text).ids[:tokens]
    return linear_inputs(model.config, model.weights, ids, tuple(KINDS))


def calibration_inputs(model, tokens):
    """``layer_inputs`` on the calibration text (``lee.cor``)."""
    return layer_inputs(model, calibration_text(), tokens)


def measure(weights, activations, fns):
    """Per layer: {method: {"weight": rel err, "output": rel err}} (output only with activations)."""
    results = {}
    for name, w in weights.items():
        w64 = w.astype(np.float64)
        x = activations.get(name)
        ref_out = None if x is None else x @ w64.T
        row = {}
        for method, fn in fns.items():
            diff = w64 - fn(w).astype(np.float64)
            row[method] = {"weight": float(np.linalg.norm(diff) / np.linalg.norm(w64))}
            if ref_out is not None:
                row[method]["output"] = float(np.linalg.norm(x @ diff.T) / np.linalg.norm(ref_out))
        results[name] = row
        print(f"{name}: " + ", ".join(f"{m} {v['weight']:.4f}" for m, v in row.items()), flush=True)
    return results


def summarize(per_layer, fns, weights):
    """Means per layer kind and overall, per method and metric; plus a global (size-weighted) weight error."""
    metrics = sorted({metric for row in per_layer.values() for v in row.values() for metric in v})
    summary = {}
    for kind in KINDS + ["all"]:
        names = [n for n in per_layer if kind == "all" or n.split(".")[4] == kind]
        summary[kind] = {
            method: {metric: float(np.mean([per_layer[n][method][metric] for n in names]))
                     for metric in metrics}
            for method in fns
        }
    total = sum(float(np.sum(np.square(w.astype(np.float64)))) for w in weights.values())
    for method in fns:
        sq = sum(per_layer[n][method]["weight"] ** 2 * float(np.sum(np.square(w.astype(np.float64))))
                 for n, w in weights.items())
        summary["all"][method]["weight_global"] = float(np.sqrt(sq / total))
    return summary


def markdown(summary, metric):
    """Markdown table: rows are layer kinds (+ mean), columns the methods."""
    lines = ["| layer | " + " | ".join(TABLE_METHODS) + " |",
             "|---" * (len(TABLE_METHODS) + 1) + "|"]
    for kind in KINDS + ["all"]:
        label = "**mean**" if kind == "all" else kind
        cells = [f"{summary[kind][m][metric]:.4f}" for m in TABLE_METHODS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="only the first N decoder layers")
    parser.add_argument("--group", type=int, default=DEFAULT_GROUP, help="group size along K (32, 64, 128)")
    parser.add_argument("--iterations", type=int, default=10, help="BCQ alternating refinement rounds")
    parser.add_argument("--calib-tokens", type=int, default=512, help="0 skips the output error")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    start = time.time()
    model = load_gguf_llama(find_smollm2_gguf())
    layers = args.layers or model.config["num_hidden_layers"]
    weights = linear_weights(model, layers)
    activations = calibration_inputs(model, args.calib_tokens) if args.calib_tokens else {}
    fns = methods(args.iterations, args.group)
    per_layer = measure(weights, activations, fns)
    summary = summarize(per_layer, fns, weights)
    record = {
        "model": model.path.name, "group_size": args.group, "bcq_iterations": args.iterations,
        "layers": layers, "calibration_tokens": args.calib_tokens if activations else 0,
        "note": "weights are the GGUF's Q4_1 (4-bit, group 32) weights dequantized to float32",
        "seconds": round(time.time() - start, 1),
        "summary": summary, "per_layer": per_layer,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nrelative weight error ||W - W_hat||_F / ||W||_F, group {args.group}, mean over {layers} layers\n")
    print(markdown(summary, "weight"))
    if activations:
        print(f"\nrelative output error on {args.calib_tokens} calibration tokens\n")
        print(markdown(summary, "output"))
    print(f"\nwrote {args.out} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
