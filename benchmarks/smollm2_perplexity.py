"""Perplexity of SmolLM2-135M with its linear layers quantized by each scheme (CPU, HF transformers).

Usage: python benchmarks/smollm2_perplexity.py [--methods fp int4-sym rtn3-asym bcq3 abcq3 ...] [--windows 56]

``gptq-sym``/``gptq-asym``: GPTQ int4 (``lowbit_tvm.quant.gptq``) with Hessians from 8 x 512 tokens of
``lee.cor``. ``awq-sym``/``awq-asym``: activation-aware scales (``lowbit_tvm.quant.awq``, searched on 1024 tokens
of ``lee.cor`` and folded into the norms and up rows: an equivalent float model), then int4 RTN. ``abcq3``/``abcq4``: activation-aware BCQ (least squares weighted by each input channel's mean square
activation on 512 tokens of the calibration text ``lee.cor``, never on the evaluation text).

Every q/k/v/o/gate/up/down weight is replaced by its reconstruction (quantize + dequantize, group 128, K padded
to whole groups; methods from ``bcq_accuracy.py``); embeddings, norms and the tied LM head stay as in the GGUF.
The model then runs in HF transformers (fp32) on the Lee corpus protocol of ``lowbit_tvm.models.perplexity``
(56 windows of 512 tokens: 28,616 scored tokens). Our Relax graph with the W4A16 kernel computes the same
function up to fp16 activation rounding (``tests/test_llama_cpu.py`` checks it against these dequantized
weights), so these are the quantizers' perplexities. Prints a markdown table; ``--json`` writes the records.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bcq_accuracy import calibration_inputs, linear_weights, methods  # noqa: E402  pylint: disable=wrong-import-position

from lowbit_tvm.models.corpus import lee_corpus_text  # noqa: E402  pylint: disable=wrong-import-position
from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # noqa: E402
from lowbit_tvm.models.hf_reference import hf_llama, hf_logits_fn  # noqa: E402
from lowbit_tvm.models.perplexity import window_perplexity  # noqa: E402

GROUP = 128
CALIBRATION_TOKENS = 512


def calibration_hessians(model, windows: int = 8) -> dict:
    """HF linear name -> summed ``X^T X`` of its inputs over ``windows`` x 512 tokens of the calibration text."""
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.corpus import calibration_text  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant.gptq import input_hessian  # pylint: disable=import-outside-toplevel

    hf = hf_llama(model)
    ids = model.tokenizer().encode(calibration_text()).ids
    hessians = {}

    def hook(name):
        def accumulate(module, args):  # returns None: the input is not replaced
            h = input_hessian(args[0][0].double().numpy())
            hessians[name] = hessians.get(name, 0.0) + h
        return accumulate

    handles = [m.register_forward_pre_hook(hook(n + ".weight")) for n, m in hf.named_modules()
               if n.split(".")[-1].endswith("_proj")]
    with torch.no_grad():
        for start in range(0, min(len(ids) // 512, windows) * 512, 512):
            hf(torch.tensor([ids[start:start + 512]]))
    for handle in handles:
        handle.remove()
    return hessians


def gptq(symmetric: bool, hessians: dict, damping: float):
    """GPTQ int4 (group 128), K zero-padded to whole groups (padded inputs are dead: weight 0)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.quant import Int4Scheme, dequantize  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant.gptq import gptq_quantize  # pylint: disable=import-outside-toplevel

    def run(name, w):
        k = w.shape[1]
        pad = -k % GROUP
        h = np.pad(hessians[name], ((0, pad), (0, pad)))
        qw = gptq_quantize(np.pad(w, ((0, 0), (0, pad))), h, Int4Scheme(GROUP, symmetric), damping)
        return dequantize(qw)[:, :k]

    return run


def aware_bcq(bits: int, iterations: int, activations: dict):
    """Activation-aware BCQ: the fit weighted by each input channel's mean square activation on the
    calibration text (``lee.cor``, not the evaluation text)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.quant.bcq import BCQScheme, bcq_dequantize, bcq_quantize  # pylint: disable=import-outside-toplevel

    def run(name, w):
        k = w.shape[1]
        energy = np.pad((activations[name] ** 2).mean(axis=0), (0, -k % GROUP))
        energy = energy + 1e-3 * energy.mean()  # padded columns and dead channels keep a little weight
        padded = np.pad(w, ((0, 0), (0, -k % GROUP)))
        scheme = BCQScheme(bits, GROUP, True)
        return bcq_dequantize(bcq_quantize(padded, scheme, iterations, channel_weights=energy))[:, :k]

    return run


def awq_weights(model, symmetric: bool) -> dict:
    """The AWQ-scaled float weights of every layer, then int4 RTN of their linear layers (group 128)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.quant import Int4Scheme  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant.awq import awq_transform, rtn_reconstruction  # pylint: disable=import-outside-toplevel

    scheme = Int4Scheme(GROUP, symmetric)
    inputs = calibration_inputs(model, 2 * CALIBRATION_TOKENS)
    layers = model.config["num_hidden_layers"]
    scaled, choices = awq_transform(model.weights, layers, inputs, scheme)
    gain = sum(c.rtn_error - c.error for c in choices) / len(choices)
    print(f"awq {scheme.name}: mean alpha {sum(c.alpha for c in choices) / len(choices):.2f}, calibration output "
          f"error down by {gain:.4f} on average", flush=True)
    replaced = {name: w for name, w in scaled.items() if not np.array_equal(w, model.weights[name])}
    for name in linear_weights(model, layers):
        replaced[name] = rtn_reconstruction(scaled[name], scheme).astype("float32")
    return replaced


def perplexity_with(model, replaced: dict, ids, windows: int):
    """Perplexity of ``model`` with the weights in ``replaced`` swapped in."""
    original = dict(model.weights)
    model.weights.update(replaced)
    try:
        hf = hf_llama(model)
    finally:
        model.weights.clear()
        model.weights.update(original)
    return window_perplexity(hf_logits_fn(hf), ids, 512, max_windows=windows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["fp", "int4-sym", "int4-asym", "rtn3-asym", "bcq3", "bcq4"])
    parser.add_argument("--windows", type=int, default=56)
    parser.add_argument("--iterations", type=int, default=10, help="BCQ refinement rounds")
    parser.add_argument("--damping", type=float, default=0.01, help="GPTQ Hessian damping (fraction of mean diagonal)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = load_gguf_llama(find_smollm2_gguf())
    ids = model.tokenizer().encode(lee_corpus_text()).ids
    linears = linear_weights(model, model.config["num_hidden_layers"])
    fns = {name: (lambda fn: lambda _, w: fn(w))(fn) for name, fn in methods(args.iterations, GROUP).items()}
    if any(method.startswith("abcq") for method in args.methods):
        activations = calibration_inputs(model, CALIBRATION_TOKENS)
        fns["abcq3"] = aware_bcq(3, args.iterations, activations)
        fns["abcq4"] = aware_bcq(4, args.iterations, activations)
    if any(method.startswith("gptq") for method in args.methods):
        hessians = calibration_hessians(model)
        fns["gptq-sym"] = gptq(True, hessians, args.damping)
        fns["gptq-asym"] = gptq(False, hessians, args.damping)
    records = []
    for method in args.methods:
        start = time.time()
        if method.startswith("awq"):
            replaced = awq_weights(model, method == "awq-sym")
        else:
            replaced = {} if method == "fp" else {
                name: fns[method](name, w).astype("float32") for name, w in linears.items()
            }
        result = perplexity_with(model, replaced, ids, args.windows)
        records.append({"method": method, "group": GROUP, "perplexity": result.perplexity,
                        "scored_tokens": result.scored_tokens})
        print(f"{method}: perplexity {result.perplexity:.2f} over {result.scored_tokens} tokens "
              f"({time.time() - start:.0f} s)", flush=True)
    print("\n| method (group 128) | perplexity | vs fp |\n|---|---|---|")
    base = next((r["perplexity"] for r in records if r["method"] == "fp"), None)
    for r in records:
        rel = f"{(r['perplexity'] / base - 1) * 100:+.1f} %" if base else ""
        print(f"| {r['method']} | {r['perplexity']:.2f} | {rel} |")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
