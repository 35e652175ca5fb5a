"""SmolLM2-135M through the ONNX frontend, calibrated: RTN vs GPTQ-only vs AWQ+clip+GPTQ (sequential), Lee perplexity.

Usage: python benchmarks/onnx_smollm2_calibrated.py [--scratch DIR] [--schemes ...] [--recipes ...]
       [--windows N] [--calibration-windows N] [--library-windows N]

The static ONNX export of ``onnx_smollm2.py`` ([1, 512] input_ids -> logits, HF ``LlamaForCausalLM`` with the
GGUF's weights) is calibrated exactly as ``compile_onnx(..., calibration=feeds, recipe=...)`` does
(``frontend.onnx_library``'s ``_quantize_pass`` and ``_calibrate``: the same pre-pass, groups, AWQ folds and
quantized weights), on ``--calibration-windows`` x 512 tokens of ``corpus.wiki_calibration_text`` (the text the
Relax Llama's ``build --gptq --awq`` calibrates on; disjoint from the evaluation text). The recipes were fixed
before any Lee measurement: ``gptq`` is the old ``--calibrate`` behaviour (GPTQ in column order on the float
model's inputs), ``awq`` is the default ``OnnxRecipe`` (the Relax Llama's winning recipe made generic).

Perplexity on the Lee corpus (``lowbit_tvm.models.perplexity``, 56 windows of 512 tokens): onnxruntime runs the
calibrated graph (AWQ folds and inserted multiplies included) with the quantized weights dequantized to float32,
i.e. the compiled library's arithmetic except its fp16 activations; the llvm library itself runs one window in
7-15 minutes here, so ``--library-windows N`` (default 0) also builds the library from the same calibrated graph
(``compile_onnx``'s last step) and measures it on the first N windows beside the onnxruntime number for them.

Writes ``benchmarks/results/onnx_smollm2_calibrated.json``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from onnx_smollm2 import WINDOW, export_onnx, lee_ids  # noqa: E402  pylint: disable=wrong-import-position

RESULTS = Path(__file__).parent / "results" / "onnx_smollm2_calibrated.json"


def recipes():
    from lowbit_tvm.frontend.onnx_calibrate import DEFAULT_RECIPE, OnnxRecipe  # pylint: disable=C0415

    return {"rtn": None,
            "gptq": OnnxRecipe(awq=False, clip=False, act_order=False, sequential=False),
            "awq": DEFAULT_RECIPE}


def calibration_feeds(count: int) -> list:
    from lowbit_tvm.models.calibration import calibration_windows  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.corpus import wiki_calibration_text  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # pylint: disable=C0415

    ids = load_gguf_llama(find_smollm2_gguf()).tokenizer().encode(wiki_calibration_text()).ids
    return [{"input_ids": window[None].astype(np.int64)} for window in calibration_windows(ids, count, WINDOW)]


class Progress:
    """Prints every 20 groups."""

    def __call__(self, groups):
        start = time.time()
        groups = list(groups)
        for index, group in enumerate(groups):
            if index % 20 == 0:
                print(f"  group {index}/{len(groups)} at {time.time() - start:.0f} s", flush=True)
            yield group
        print(f"  {len(groups)} groups in {time.time() - start:.0f} s", flush=True)


def calibrated_graph(onnx_path: Path, scheme: str, recipe, feeds):
    """``(graph, quantize_pass, calibration record)`` as ``compile_onnx`` makes them (llvm target)."""
    from lowbit_tvm.frontend import onnx_library as lib  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.frontend.onnx_import import normalized_graph  # pylint: disable=import-outside-toplevel

    quant_scheme = lib._scheme(scheme)  # pylint: disable=protected-access
    graph = normalized_graph(onnx_path)
    quantize_pass = lib._quantize_pass(graph, quant_scheme, lib._target("llvm", None), lib.DEFAULT_KEEP_FLOAT)  # noqa
    record = None
    if recipe is not None:
        record = lib._calibrate(graph, feeds, quant_scheme, recipe, quantize_pass, Progress())  # noqa
    return graph, quantize_pass, record


def emulated_weights(graph, quantize_pass) -> dict:
    """The weight inputs the library computes with, as float arrays: quantized layers dequantized (as the pass
    quantizes them), float layers and other parameters as they are."""
    from lowbit_tvm.frontend.onnx_linears import LinearWeight  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import dequantize  # pylint: disable=import-outside-toplevel

    weights = {}
    for name, value in graph.params:
        if isinstance(value, LinearWeight):
            _, qw, _ = quantize_pass.plan(value)
            dense = value.float_weight() if qw is None else dequantize(qw)[:, : value.k]
            weights[name] = np.ascontiguousarray(dense.T.astype(value.dtype))
        else:
            weights[name] = value
    return weights


def ort_perplexity(model, weights: dict, windows) -> dict:
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.perplexity import window_perplexity  # pylint: disable=import-outside-toplevel

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def logits_fn(window):
        return session.run(None, {"input_ids": np.asarray(window, np.int64)[None], **weights})[0][0]

    start = time.time()
    result = window_perplexity(logits_fn, lee_ids(), WINDOW, max_windows=windows)
    return {"perplexity": result.perplexity, "windows": result.windows, "scored_tokens": result.scored_tokens,
            "seconds": round(time.time() - start, 1)}


def library_check(onnx_path: Path, scratch: Path, scheme: str, prepared, windows: int, weights) -> dict:
    """Build the library from the calibrated graph (``compile_onnx``'s last step) and measure it on the first
    ``windows`` windows, beside the onnxruntime emulation on the same windows."""
    from lowbit_tvm.frontend import load, onnx_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.perplexity import window_perplexity  # pylint: disable=import-outside-toplevel

    graph, quantize_pass, record = prepared
    out = scratch / f"{scheme}_{'rtn' if record is None else record['label'].replace(', ', '_')}.so"
    start = time.time()
    onnx_library._write(graph, quantize_pass, onnx_path, out, quantize_pass.target, record, True)  # noqa
    info = {"build_seconds": round(time.time() - start, 1)}
    engine = load(out)
    start = time.time()
    ours = window_perplexity(lambda w: engine(input_ids=np.asarray(w, np.int64)[None])["logits"][0], lee_ids(),
                             WINDOW, max_windows=windows)
    info.update(library_perplexity=ours.perplexity, windows=windows, seconds=round(time.time() - start, 1),
                onnxruntime_emulation_same_windows=ort_perplexity(graph.model, weights, windows)["perplexity"])
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/work/scratch/onnx_awq"))
    parser.add_argument("--windows", type=int, default=56)
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument("--schemes", nargs="+", default=["w4a16-g128", "w4a16-g128-asym"])
    parser.add_argument("--recipes", nargs="+", default=["fp", "rtn", "gptq", "awq"])
    parser.add_argument("--library-windows", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file to update")
    args = parser.parse_args()
    results = args.results
    records = json.loads(results.read_text()) if results.exists() else {}

    def save(key, info):
        records[key] = info
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(records, indent=1) + "\n")
        print(key, json.dumps({k: v for k, v in info.items() if k != "calibration"}), flush=True)

    onnx_path = export_onnx(args.scratch / "smollm2_static.onnx")
    if "fp" in args.recipes:
        import onnx  # pylint: disable=import-outside-toplevel

        save("fp_onnxruntime", ort_perplexity(onnx.load(str(onnx_path)), {}, args.windows))
    feeds = calibration_feeds(args.calibration_windows)
    for scheme in args.schemes:
        for name in [r for r in args.recipes if r != "fp"]:
            recipe = recipes()[name]
            start = time.time()
            prepared = calibrated_graph(onnx_path, scheme, recipe, feeds)
            graph, quantize_pass, record = prepared
            weights = emulated_weights(graph, quantize_pass)
            info = {"scheme": scheme, "recipe": "rtn" if recipe is None else recipe.label,
                    "calibration_text": None if recipe is None else
                    f"wiki_calibration_text, {len(feeds)} windows x {WINDOW} tokens",
                    "prepare_seconds": round(time.time() - start, 1),
                    "calibration_seconds": None if record is None else record["seconds"],
                    "lee_onnxruntime_emulation": ort_perplexity(graph.model, weights, args.windows)}
            if record is not None:
                info["awq_folds"] = {kind: sum(g["awq"] == kind for g in record["groups"])
                                     for kind in ("folded", "multiply", None)}
                info["awq_folds"]["none"] = info["awq_folds"].pop(None)
                info["calibration"] = record
            if args.library_windows:
                info["library"] = library_check(onnx_path, args.scratch, scheme, prepared, args.library_windows,
                                                weights)
            save(f"{scheme}_{name}" + (f"_library_{args.library_windows}_windows" if args.library_windows else ""),
                 info)


if __name__ == "__main__":
    main()
