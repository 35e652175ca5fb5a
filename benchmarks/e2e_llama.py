"""End-to-end decode/prefill speed of the Relax Llama (fp16, W4A16, BCQ 3/4-bit) against HF transformers fp16 eager.

Two steps, because the GPU machine has no room for checkpoints and building is CPU work:

    python benchmarks/e2e_llama.py build OUT_DIR [--preset llama-2-7b]   # CPU: nvcc, writes OUT_DIR/*.so
    python benchmarks/e2e_llama.py time OUT_DIR RESULT.json              # GPU: random weights, timings
    python benchmarks/e2e_llama.py decode DIR... RESULT.json             # GPU: decode steps only, 3 rounds

``build --no-pdl`` compiles without programmatic dependent launch (``codegen.pdl``), for comparisons.

Weights are random (speed does not depend on their values): quantized codes, scales, bit planes and alphas
are drawn directly in the kernels' layouts on the GPU.
"""
import argparse
import json
import sys
import time
from pathlib import Path

SCHEMES = ("fp16", "w4a16-g128", "bcq3-g128", "bcq4-g128")
BATCHES = (1, 16, 64)
CONTEXT = 128  # tokens already in each sequence's cache when decode is timed
PREFILL = 512


def build(out_dir: Path, preset: str, schemes=SCHEMES, pdl: bool = True) -> None:
    """Compile the graphs of ``preset`` (fp16 and W4A16 by default) for sm_90 and write their parameter specs."""
    from lowbit_tvm.codegen import pdl as pdl_pass  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.builder import build as build_graph  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.config import get_preset  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.recipe import ModelRecipe  # pylint: disable=import-outside-toplevel

    pdl_pass.ENABLED = pdl
    out_dir.mkdir(parents=True, exist_ok=True)
    target = default_target("sm_90")
    for scheme in schemes:
        recipe = ModelRecipe(get_preset(preset), scheme, "float16")
        start = time.time()
        executable, model, names = build_graph(recipe, target)
        export_library(executable, out_dir / f"{scheme}.so", overwrite=True)
        shapes = dict(model.named_parameters())
        spec = [[name, [int(d) for d in shapes[name].shape], shapes[name].dtype] for name in names]
        record = {"preset": preset, "recipe": recipe.to_json(), "params": spec}
        (out_dir / f"{scheme}.json").write_text(json.dumps(record))
        print(f"built {scheme} in {time.time() - start:.0f} s", flush=True)


def _random_params(spec: list, device) -> list:
    import torch  # pylint: disable=import-outside-toplevel

    params = []
    for name, shape, dtype in spec:
        if dtype == "uint32":
            params.append(torch.randint(0, 2**31, shape, dtype=torch.int32, device=device).view(torch.uint32))
        elif name.endswith("scales"):
            params.append(torch.full(shape, 0.01, dtype=torch.float16, device=device))
        elif "norm" in name:
            params.append(torch.ones(shape, dtype=torch.float16, device=device))
        else:
            params.append((torch.randn(shape, device=device) * 0.02).half())
    return params


def _time_ms(fn, repeat: int = 20) -> float:
    import torch  # pylint: disable=import-outside-toplevel

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def _engine(lib_dir: Path, scheme: str):
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.codegen import load_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.engine import LlamaEngine  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.recipe import ModelRecipe  # pylint: disable=import-outside-toplevel

    record = json.loads((lib_dir / f"{scheme}.json").read_text())
    device = torch.device("cuda")
    return LlamaEngine(load_library(lib_dir / f"{scheme}.so"), ModelRecipe.from_json(record["recipe"]),
                       _random_params(record["params"], device), device)


def decode_rounds(lib_dirs: list, out_json: Path, batches=(1, 16), rounds: int = 3) -> None:
    """Decode-step medians (30 steps each, ``rounds`` times) of every scheme built in each of ``lib_dirs``."""
    import torch  # pylint: disable=import-outside-toplevel

    records = []
    for lib_dir in lib_dirs:
        for scheme in [name for name in SCHEMES if (lib_dir / f"{name}.so").exists()]:
            engine = _engine(lib_dir, scheme)
            for batch in batches:
                step = engine.decode_step_fn(batch, CONTEXT)
                ms = [_time_ms(step, repeat=30) for _ in range(rounds)]
                records.append({"engine": f"lowbit_tvm-{scheme}", "variant": lib_dir.name, "batch": batch,
                                "gpu": torch.cuda.get_device_name(), "decode_step_ms_rounds": ms})
                print(lib_dir.name, scheme, batch, " ".join(f"{m:.3f}" for m in ms), flush=True)
                del step
            del engine
            torch.cuda.empty_cache()
    out_json.write_text(json.dumps(records, indent=1))


def _ours(lib_dir: Path, scheme: str) -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel

    engine = _engine(lib_dir, scheme)
    result = {}
    for batch in BATCHES:
        step = engine.decode_step_fn(batch, CONTEXT)
        ms = _time_ms(step)
        result[f"decode_b{batch}_ms"] = ms
        result[f"decode_b{batch}_tok_s"] = batch * 1000.0 / ms
        print(f"{scheme} decode batch {batch}: {ms:.2f} ms/step, {batch * 1000.0 / ms:.0f} tok/s", flush=True)
    ids = np.zeros(PREFILL, dtype=np.int64)
    result["prefill_512_ms"] = _time_ms(lambda: engine.logits(ids), repeat=5)  # every token's logits, as HF
    print(f"{scheme} prefill {PREFILL}: {result['prefill_512_ms']:.1f} ms", flush=True)
    del engine
    torch.cuda.empty_cache()
    return result


def _hf(preset: str) -> dict:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.config import get_preset  # pylint: disable=import-outside-toplevel

    cfg = get_preset(preset)
    hf_config = transformers.LlamaConfig(**{k: v for k, v in cfg.to_json().items()})
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(hf_config).half().eval()
    result = {}
    with torch.no_grad():
        for batch in BATCHES:
            ids = torch.zeros(batch, CONTEXT, dtype=torch.long, device="cuda")
            out = model(ids, use_cache=True)
            cache = out.past_key_values
            step_ids = torch.zeros(batch, 1, dtype=torch.long, device="cuda")

            def step(cache=cache, step_ids=step_ids):
                model(step_ids, past_key_values=cache, use_cache=True)
                cache.crop(CONTEXT)

            ms = _time_ms(step)
            result[f"decode_b{batch}_ms"] = ms
            result[f"decode_b{batch}_tok_s"] = batch * 1000.0 / ms
            print(f"hf-fp16 decode batch {batch}: {ms:.2f} ms/step", flush=True)
        ids = torch.zeros(1, PREFILL, dtype=torch.long, device="cuda")
        result["prefill_512_ms"] = _time_ms(lambda: model(ids), repeat=5)
    del model
    torch.cuda.empty_cache()
    return result


def profile(lib_dir: Path, scheme: str, batch: int, out_txt: Path) -> None:
    """The GPU kernels of 10 decode steps (torch.profiler sees every CUDA kernel of the process)."""
    import torch  # pylint: disable=import-outside-toplevel
    from torch.profiler import ProfilerActivity, profile as torch_profile  # pylint: disable=import-outside-toplevel

    engine = _engine(lib_dir, scheme)
    step = engine.decode_step_fn(batch, CONTEXT)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    out_txt.write_text(table)
    print(table)


def time_all(lib_dir: Path, out_json: Path) -> None:
    """Time every scheme built in ``lib_dir`` and HF fp16 in one process; write the records."""
    import torch  # pylint: disable=import-outside-toplevel

    preset = json.loads((lib_dir / f"{SCHEMES[0]}.json").read_text())["preset"]
    records = []
    gpu = torch.cuda.get_device_name()
    for scheme in [name for name in SCHEMES if (lib_dir / f"{name}.so").exists()]:
        records.append({"engine": f"lowbit_tvm-{scheme}", "preset": preset, "gpu": gpu, **_ours(lib_dir, scheme)})
        out_json.write_text(json.dumps(records, indent=1))  # what is done survives a time limit
    records.append({"engine": "hf-transformers-fp16-eager", "preset": preset, "gpu": gpu, **_hf(preset)})
    out_json.write_text(json.dumps(records, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the graphs for sm_90 (CPU is enough)")
    b.add_argument("out_dir", type=Path)
    b.add_argument("--preset", default="llama-2-7b")
    b.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    b.add_argument("--no-pdl", action="store_true", help="build without programmatic dependent launch")
    d = sub.add_parser("decode", help="decode steps only (batch 1 and 16, 3 rounds) of the libraries in each DIR")
    d.add_argument("lib_dirs", type=Path, nargs="+")
    d.add_argument("out_json", type=Path)
    t = sub.add_parser("time", help="time them on the local GPU")
    t.add_argument("lib_dir", type=Path)
    t.add_argument("out_json", type=Path)
    p = sub.add_parser("profile", help="the GPU kernels of 10 decode steps of one scheme")
    p.add_argument("lib_dir", type=Path)
    p.add_argument("scheme", choices=SCHEMES)
    p.add_argument("out_txt", type=Path)
    p.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out_dir, args.preset, args.schemes, pdl=not args.no_pdl)
    elif args.command == "decode":
        decode_rounds(args.lib_dirs, args.out_json)
    elif args.command == "profile":
        profile(args.lib_dir, args.scheme, args.batch, args.out_txt)
    else:
        time_all(args.lib_dir, args.out_json)


if __name__ == "__main__":
    main(sys.argv[1:])
