"""SmolLM2-135M through the ONNX frontend (CPU): export, import, compile for llvm, compare, perplexity.

Usage: python benchmarks/onnx_smollm2.py [--scratch DIR] [--windows N] [--steps fp w4 nbits]
       python benchmarks/onnx_smollm2.py --dynamic dynamo|torchscript [--scratch DIR]

1. ``fp``: HF ``LlamaForCausalLM`` built from the GGUF's config and dequantized weights (``hf_llama``), exported
   with ``torch.onnx.export`` (TorchScript exporter, logits over ``input_ids`` [1, 512], no KV cache) into
   ``--scratch`` (never into the repository); compiled unquantized (``scheme="fp16"``: the
   float weights as they are) for llvm; logits compared with onnxruntime on the same ONNX file.
2. ``w4``: compiled with ``w4a16-g128`` and ``w4a16-g128-asym`` (LM head kept float, the default), logits compared
   with the fp ONNX model and perplexity on the first ``--windows`` 512-token windows of the Lee corpus
   (``lowbit_tvm.models.perplexity``), beside the fp library's perplexity on the same windows.
3. ``hf``: HF transformers' perplexity on the same windows (fp, and the RTN-quantized weights dequantized), the
   reference for the windows measured here (the full 56-window numbers are in ``smollm2_perplexity.json``).
4. ``nbits``: onnxruntime's ``MatMulNBitsQuantizer`` (block 128, asymmetric, every MatMul with a constant weight,
   LM head included) makes a MatMulNBits model; we compile it (codes kept) and compare logits with onnxruntime
   running that same model, and measure its perplexity on the same windows.

Writes ``benchmarks/results/onnx_smollm2.json``.

The perplexity steps use a static input shape. ``--dynamic dynamo`` (``dynamo=True``, needs ``onnxscript``) or
``--dynamic torchscript`` (``dynamic_axes``) instead exports with dynamic batch/sequence dimensions, compiles the
fp model for llvm once and runs it at two (batch, seq) shapes against onnxruntime (no perplexity); it records
``fp_dynamic_<exporter>``. Both graphs need ``frontend/onnx_converters.py`` to import in TVM 0.27.
"""
import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from lowbit_tvm.frontend import compile_onnx, load

RESULTS = Path(__file__).parent / "results" / "onnx_smollm2.json"
# The static export's input shape [1, WINDOW], which is also the perplexity window.
WINDOW = 512
# (batch, seq) shapes run through one library built from the dynamic export.
DYNAMIC_SHAPES = ((1, 9), (2, 33))


def export_onnx(path: Path, dynamic: str | None = None) -> Path:
    """SmolLM2-135M (dequantized GGUF weights in HF ``LlamaForCausalLM``) as a logits-only ONNX graph.

    Static ([1, WINDOW], TorchScript exporter), or with dynamic batch and sequence by the exporter ``dynamic``
    names (``"dynamo"`` or ``"torchscript"``).
    """
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # pylint: disable=C0415
    from lowbit_tvm.models.hf_reference import hf_llama, logits_module  # pylint: disable=C0415

    if path.exists():
        return path
    hf = hf_llama(load_gguf_llama(find_smollm2_gguf()))
    hf.config._attn_implementation = "eager"  # pylint: disable=protected-access

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamic == "dynamo":
            dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2, max=2048)}
            torch.onnx.export(logits_module(hf), (torch.randint(0, 1000, (1, 16)),), str(path), dynamo=True,
                              input_names=["input_ids"], output_names=["logits"], opset_version=18,
                              dynamic_shapes=(dims,), external_data=False)
        elif dynamic == "torchscript":
            axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
            torch.onnx.export(logits_module(hf), (torch.randint(0, 1000, (1, 16)),), str(path), dynamo=False,
                              input_names=["input_ids"], output_names=["logits"], opset_version=17,
                              dynamic_axes=axes)
        else:
            torch.onnx.export(logits_module(hf), (torch.randint(0, 1000, (1, WINDOW)),), str(path), dynamo=False,
                              input_names=["input_ids"], output_names=["logits"], opset_version=17)
    return path


def matmul_nbits_model(fp_path: Path, path: Path) -> Path:
    """The fp model quantized by onnxruntime's own MatMulNBitsQuantizer (4 bits, block 128, asymmetric)."""
    import onnx  # pylint: disable=import-outside-toplevel
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # pylint: disable=C0415

    if path.exists():
        return path
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp_path)), block_size=128, is_symmetric=False)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    return path


def ort_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})[0]


def rel(a, b) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def lee_ids() -> np.ndarray:
    from lowbit_tvm.models.corpus import lee_corpus_text  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # pylint: disable=C0415

    return np.asarray(load_gguf_llama(find_smollm2_gguf()).tokenizer().encode(lee_corpus_text()).ids)


def perplexity(library: Path, windows: int, reference_onnx: Path) -> dict:
    """Perplexity of ``library`` on the first ``windows`` Lee windows, and its logits on the first window vs
    onnxruntime running ``reference_onnx`` (one forward per window: the CPU build is slow)."""
    from lowbit_tvm.models.perplexity import window_perplexity  # pylint: disable=import-outside-toplevel

    engine = load(library)
    seen = []

    def logits_fn(window):
        logits = engine(input_ids=np.asarray(window, np.int64)[None])["logits"][0]
        seen.append((np.asarray(window, np.int64), logits))
        return logits

    start = time.time()
    result = window_perplexity(logits_fn, lee_ids(), WINDOW, max_windows=windows)
    first_ids, first_logits = seen[0]
    reference = ort_logits(reference_onnx, first_ids[None])[0]
    return {"perplexity": result.perplexity, "windows": result.windows, "scored_tokens": result.scored_tokens,
            "seconds": round(time.time() - start, 1),
            f"logits_rel_diff_vs_onnxruntime_{reference_onnx.stem}": rel(first_logits, reference)}


def ort_perplexity(path: Path, windows: int) -> float:
    """onnxruntime's perplexity of ``path`` on the first ``windows`` Lee windows."""
    from lowbit_tvm.models.perplexity import window_perplexity  # pylint: disable=import-outside-toplevel

    def logits_fn(window):
        return ort_logits(path, np.asarray(window, np.int64)[None])[0]

    return window_perplexity(logits_fn, lee_ids(), WINDOW, max_windows=windows).perplexity


def hf_reference(windows: int) -> dict:
    """HF transformers (fp32) perplexity on the same windows: fp and group-128 RTN weights (dequantized)."""
    from lowbit_tvm.models.corpus import lee_corpus_text  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # pylint: disable=C0415
    from lowbit_tvm.models.hf_reference import hf_llama_from, hf_logits_fn  # pylint: disable=C0415
    from lowbit_tvm.models.perplexity import window_perplexity  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import dequantize, get_scheme, quantize  # pylint: disable=import-outside-toplevel

    gguf = load_gguf_llama(find_smollm2_gguf())
    ids = np.asarray(gguf.tokenizer().encode(lee_corpus_text()).ids)
    out = {}
    for name in ("fp", "w4a16-g128", "w4a16-g128-asym"):
        weights = dict(gguf.weights)
        if name != "fp":
            for key, w in gguf.weights.items():
                if key.endswith("_proj.weight"):
                    k = w.shape[1]
                    padded = np.pad(w, ((0, 0), (0, -(-k // 128) * 128 - k)))
                    weights[key] = dequantize(quantize(padded, get_scheme(name)))[:, :k]
        result = window_perplexity(hf_logits_fn(hf_llama_from(gguf.config, weights)), ids, WINDOW, max_windows=windows)
        out[name] = result.perplexity
    return out


def compile_timed(source: Path, out: Path, scheme) -> tuple:
    start = time.time()
    result = compile_onnx(source, out, scheme=scheme, target="llvm", overwrite=True)
    kinds = {}
    for layer in result.layers:
        kinds[f"{layer['kernel']}: {layer['note']}"] = kinds.get(f"{layer['kernel']}: {layer['note']}", 0) + 1
    return result, {"compile_seconds": round(time.time() - start, 1), "layers": kinds}


def dynamic_check(scratch: Path, exporter: str) -> dict:
    """Compile the dynamic-shape fp export once; logits at ``DYNAMIC_SHAPES`` vs onnxruntime on the same file."""
    path = export_onnx(scratch / f"smollm2_dynamic_{exporter}.onnx", dynamic=exporter)
    _, info = compile_timed(path, scratch / f"fp_dynamic_{exporter}.so", "fp16")
    engine = load(scratch / f"fp_dynamic_{exporter}.so")
    info["input_shape"] = engine.inputs[0]["shape"]
    rng = np.random.default_rng(0)
    for batch, seq in DYNAMIC_SHAPES:
        ids = rng.integers(0, 49152, (batch, seq)).astype(np.int64)
        start = time.time()
        logits = engine(input_ids=ids)["logits"]
        info[f"{batch}x{seq}"] = {"forward_seconds": round(time.time() - start, 2),
                                  "logits_rel_error_vs_onnxruntime": rel(logits, ort_logits(path, ids))}
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/work/scratch/issue6"))
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--steps", nargs="+", default=["hf", "fp", "w4", "nbits"])
    parser.add_argument("--schemes", nargs="+", default=["w4a16-g128-asym", "w4a16-g128"], help="for the w4 step")
    parser.add_argument("--dynamic", choices=["dynamo", "torchscript"],
                        help="only a dynamic batch/sequence export by this exporter: compile fp, compare at two shapes")
    args = parser.parse_args()
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.dynamic:
        key = f"fp_dynamic_{args.dynamic}"
        records[key] = dynamic_check(args.scratch, args.dynamic)
        RESULTS.write_text(json.dumps(records, indent=1) + "\n")
        print(key, records[key], flush=True)
        return
    fp_onnx = export_onnx(args.scratch / "smollm2_static.onnx")
    ids = np.random.default_rng(0).integers(0, 49152, (1, WINDOW)).astype(np.int64)
    fp_ref = ort_logits(fp_onnx, ids)

    def save(key, info):
        records[key] = info
        RESULTS.write_text(json.dumps(records, indent=1) + "\n")
        print(key, info, flush=True)

    if "hf" in args.steps:
        save(f"hf_transformers_first_{args.windows}_windows", hf_reference(args.windows))
    if "fp" in args.steps:
        _, info = compile_timed(fp_onnx, args.scratch / "fp.so", "fp16")
        logits = load(args.scratch / "fp.so")(input_ids=ids)["logits"]
        info["logits_rel_error_vs_onnxruntime_random_ids"] = rel(logits, fp_ref)
        info["lee"] = perplexity(args.scratch / "fp.so", args.windows, fp_onnx)
        save("fp", info)
    if "w4" in args.steps:
        for scheme in args.schemes:
            _, info = compile_timed(fp_onnx, args.scratch / f"{scheme}.so", scheme)
            info["lee"] = perplexity(args.scratch / f"{scheme}.so", args.windows, fp_onnx)
            save(scheme, info)
    if "nbits" in args.steps:
        nbits_onnx = matmul_nbits_model(fp_onnx, args.scratch / "smollm2_nbits.onnx")
        _, info = compile_timed(nbits_onnx, args.scratch / "nbits.so", "fp16")
        info["lee"] = perplexity(args.scratch / "nbits.so", args.windows, nbits_onnx)
        info["onnxruntime_matmulnbits_perplexity_same_windows"] = ort_perplexity(nbits_onnx, args.windows)
        save("matmulnbits-b128-asym", info)


if __name__ == "__main__":
    main()
