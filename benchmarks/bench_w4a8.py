"""W4A8 (Atom-style, 128 int8 outlier channels) and W8A8 layers on the GPU vs cuBLAS fp16, torch._int_mm (W8A8),
torch._scaled_mm (fp8 e4m3) and our W4A16, one run.

Usage (GPU machine): python benchmarks/bench_w4a8.py build DIR [--jobs 12]; python benchmarks/bench_w4a8.py time DIR
[--out benchmarks/results]

``build`` compiles every kernel in parallel worker processes (default configs) into DIR; ``time`` loads them and
times each with ``triton.testing.do_bench`` medians (L2 flushed). Our layers are timed as a model pays them:
quantize kernel (reorder + per-token int8) plus GEMM(s). Weights are random codes and scales (speed does not
depend on their values); every layer is first checked against a torch float64 reference of the quantized math on
256 output columns. Peers time the bare GEMM on already-quantized operands (their activation quantization is not
counted: in their favour). Writes ``<out>/<gpu>/w4a8.json``.
"""
import argparse
import json
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SHAPES = [(4096, 22016), (8192, 57344), (28672, 8192), (11008, 4096)]  # (K, N)
BATCHES = [16, 64, 128, 256, 1024, 4096]
CHECK_COLUMNS = 256
# Config sweep of the W4A8 main GEMM (warps_m, warps_n, tile_m, tile_n), timed alone, to choose the defaults.
SWEEP_SHAPES = [(4096, 22016), (8192, 57344)]
SWEEP_BATCHES = [128, 1024, 4096]
SWEEP_CONFIGS = [(2, 4, 4, 2), (2, 4, 2, 2), (4, 2, 2, 2), (2, 2, 4, 2), (1, 4, 4, 2), (2, 4, 4, 1), (1, 4, 2, 2)]


def _schemes():
    from lowbit_tvm.quant.atom import AtomScheme  # pylint: disable=import-outside-toplevel

    return {"w4a8-o128": AtomScheme(4, 128, 128), "w8a8": AtomScheme(8, None, 0)}


def _build_layer(args):
    name, m, k, n, directory = args
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    layer = build(m, n, k, _schemes()[name], default_target())
    path = Path(directory) / f"{name}_m{m}_k{k}_n{n}.so"
    export_library(layer.module, path, overwrite=True)
    return (name, m, k, n), (str(path), layer.plan)


def _build_w4a16(args):
    m, k, n, directory = args
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import build, default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme  # pylint: disable=import-outside-toplevel

    kernel = build(W4A16Op(n, k, get_scheme("w4a16-g128"), m), default_target())
    path = Path(directory) / f"{kernel.op.name}.so"
    export_library(kernel.module, path, overwrite=True)
    return ("w4a16", m, k, n), (str(path), kernel.op)


def _build_sweep(args):
    config, m, k, n, directory = args
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a8_dispatch import block_rows, plan_linear  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a8_tensor_core import IntGemmConfig  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    cfg = IntGemmConfig(*config)
    plan = plan_linear(m, n, k, _schemes()["w4a8-o128"], cfg)
    layer = build(m, n, k, plan.scheme, default_target(), cfg)
    path = Path(directory) / f"sweep_{'_'.join(map(str, config))}_m{m}_k{k}_n{n}.so"
    export_library(layer.module, path, overwrite=True)
    return ("sweep", config, m, k, n), (str(path), layer.plan, block_rows(cfg))


def build_all(directory: Path, jobs: int) -> None:
    """Build every kernel of the run into ``directory`` (index in ``built.pkl``)."""
    directory.mkdir(parents=True, exist_ok=True)
    layers = [(name, m, k, n, str(directory)) for k, n in SHAPES for m in BATCHES for name in _schemes()]
    w4a16 = [(m, k, n, str(directory)) for k, n in SHAPES for m in BATCHES]
    sweep = [(c, m, k, n, str(directory)) for k, n in SWEEP_SHAPES for m in SWEEP_BATCHES for c in SWEEP_CONFIGS]
    built = {}
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(_build_layer, a) for a in layers] + [pool.submit(_build_w4a16, a) for a in w4a16]
        futures += [pool.submit(_build_sweep, a) for a in sweep]
        for future in futures:
            try:
                key, value = future.result()
                built[key] = value
            except Exception as err:  # pylint: disable=broad-except
                print("build failed:", repr(err)[:300], flush=True)
    (directory / "built.pkl").write_bytes(pickle.dumps(built))
    print(f"built {len(built)} kernels into {directory}", flush=True)


def _random_weights(torch, plan, rng):
    """Atom's permutation (main channels in order, random outlier channels last), random fragment words and
    scales for ``plan``; numpy arrays. (Run 2 used a fully random permutation: the worst case for the quantize
    kernel's gather.)"""
    from lowbit_tvm.quant import atom, s8_layout  # pylint: disable=import-outside-toplevel

    n, k, scheme = plan.n, plan.k, plan.scheme
    perm = atom.permutation(k, np.sort(rng.choice(k, scheme.outliers, replace=False)), scheme)
    main, _ = plan.gemms[0]
    words = rng.integers(0, 2**32, main.packed_shape, dtype=np.uint32)
    scales = (rng.random((main.groups, n)) * 0.02 + 0.005).astype(np.float16)
    args = [perm, words, scales]
    if scheme.outliers:
        out_op, _ = plan.gemms[1]
        out_words = rng.integers(0, 2**32, out_op.packed_shape, dtype=np.uint32)
        args += [out_words, (rng.random((1, n)) * 0.02 + 0.005).astype(np.float16)]
    codes = [s8_layout.from_s8_layout(words[: CHECK_COLUMNS // 16], scheme.weight_bits)]
    if scheme.outliers:
        codes.append(s8_layout.from_s8_layout(out_words[: CHECK_COLUMNS // 16], 8))
    return args, codes


def _reference(torch, x, plan, args, codes):
    """float64 reference of the first CHECK_COLUMNS outputs: the kernels' quantization formula, in torch."""
    perm = torch.from_numpy(args[0]).cuda().long()
    xp = x.float()[:, perm]
    main_k = plan.gemms[0][0].k
    total = torch.zeros(x.shape[0], CHECK_COLUMNS, dtype=torch.float64, device="cuda")
    parts = [(xp[:, :main_k], codes[0], args[2][:, :CHECK_COLUMNS].T, plan.gemms[0][0].group)]
    if plan.scheme.outliers:
        parts.append((xp[:, main_k:], codes[1], args[4][:, :CHECK_COLUMNS].T, plan.scheme.outliers))
    for part, code, scale, group in parts:
        amax = part.abs().amax(dim=1, keepdim=True)
        q = torch.clamp(torch.floor(part * (127.0 / amax.clamp(min=1e-20)) + 0.5), -127, 127).double()
        w = torch.from_numpy(code.astype(np.float64) * np.repeat(scale.astype(np.float64), group, axis=1)).cuda()
        total += (q @ w.T) * (amax.double() / 127)
    return total


def _time(fn):
    import triton.testing  # pylint: disable=import-outside-toplevel

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def _peak_tops(torch):
    """Measured int8 (torch._int_mm) and fp16 (cuBLAS) rates at 8192^3, in ops/s."""
    a = torch.randint(-127, 127, (8192, 8192), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 127, (8192, 8192), dtype=torch.int8, device="cuda").t()
    h = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    flops = 2 * 8192**3
    return flops / (_time(lambda: torch._int_mm(a, b)) * 1e-6), flops / (_time(lambda: h @ h) * 1e-6)


def time_shape(torch, built, k, n, bandwidth, peaks, load_library):
    """Records of one (K, N) for every M."""
    from lowbit_tvm.w4a8_kernel import W4A8Linear  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
    w8 = torch.randint(-127, 127, (n, k), dtype=torch.int8, device="cuda")
    wf8 = w16.to(torch.float8_e4m3fn)
    one = torch.tensor(1.0, device="cuda")
    w4_words = torch.randint(0, 2**31, (n // 16, k // 16, 32), dtype=torch.int32, device="cuda").view(torch.uint32)
    w4_scales = (torch.rand(n, k // 128, device="cuda") * 0.02).half()
    records = []
    for m in BATCHES:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        x[:, torch.randperm(k, device="cuda")[:128]] *= 100
        row = {"M": m, "N": n, "K": k, "gpu": torch.cuda.get_device_name()}
        row["fp16_us"] = _time(lambda: torch.nn.functional.linear(x, w16))
        x8 = torch.randint(-127, 127, (m, k), dtype=torch.int8, device="cuda")
        row["int_mm_us"] = _time(lambda: torch._int_mm(x8, w8.t())) if m > 16 else None
        xf8 = x.to(torch.float8_e4m3fn)
        row["fp8_us"] = _time(lambda: torch._scaled_mm(xf8, wf8.t(), scale_a=one, scale_b=one, out_dtype=torch.float16))
        if ("w4a16", m, k, n) in built:
            path, op = built["w4a16", m, k, n]
            fn = load_library(path)[op.name]
            out16 = torch.empty(m, n, device="cuda", dtype=torch.float16)
            row["w4a16_us"] = _time(lambda: fn(x, w4_words if op.layout == "mma" else w4_words.view(n, k // 8), w4_scales, out16))
        for name in _schemes():
            if (name, m, k, n) not in built:
                continue
            path, plan = built[name, m, k, n]
            layer = W4A8Linear(plan, load_library(path))
            args, codes = _random_weights(torch, plan, rng)
            weights = [torch.from_numpy(a).cuda() for a in args]
            workspace = [torch.empty(s, dtype=getattr(torch, d), device="cuda") for s, d in layer.workspace()]
            out = torch.full((plan.m_pad, n), float("nan"), device="cuda", dtype=torch.float16)
            layer(x, weights, workspace, out)
            ref = _reference(torch, x, plan, args, codes)
            got = out[:m, :CHECK_COLUMNS].double()
            err = float((got - ref).norm() / ref.norm())
            run = layer.launcher(x, weights, workspace, out)
            quant = layer.functions()[0]
            row[f"{name}_us"] = _time(run)
            row[f"{name}_quant_us"] = _time(lambda: quant(x, weights[0], *workspace))
            row[f"{name}_err"] = err
            main = plan.gemms[0][0]
            weight_bytes = sum(a.nbytes for a in args)
            act_bytes = 2 * m * k + 2 * plan.m_pad * k + 2 * plan.m_pad * n * (2 if plan.scheme.outliers else 1)
            row[f"{name}_mem_floor_us"] = (weight_bytes + act_bytes) / bandwidth * 1e6
            row[f"{name}_compute_floor_us"] = 2 * plan.m_pad * n * k / peaks[0] * 1e6
            row[f"{name}_config"] = plan.gemms[0][1].__dict__ | {"m_pad": plan.m_pad, "main_k": main.k}
        records.append(row)
        print(_line(row), flush=True)
    return records


def _line(r):
    def f(key):
        v = r.get(key)
        return "   -   " if v is None else f"{v:7.1f}"

    speed = r["fp16_us"] / r["w4a8-o128_us"] if r.get("w4a8-o128_us") else float("nan")
    return (f"K={r['K']:5d} N={r['N']:5d} M={r['M']:4d} w4a8 {f('w4a8-o128_us')} (quant {f('w4a8-o128_quant_us')}, "
            f"err {r.get('w4a8-o128_err', float('nan')):.1e}) w8a8 {f('w8a8_us')} fp16 {f('fp16_us')} int_mm "
            f"{f('int_mm_us')} fp8 {f('fp8_us')} w4a16 {f('w4a16_us')}  x{speed:.2f} vs fp16  floors mem "
            f"{f('w4a8-o128_mem_floor_us')} compute {f('w4a8-o128_compute_floor_us')}")


def time_sweep(torch, built, load_library):
    """The W4A8 main GEMM alone under each sweep config (same inputs; outputs compared with the first config)."""
    from lowbit_tvm.w4a8_kernel import W4A8Linear  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(1)
    rows = []
    for k, n in SWEEP_SHAPES:
        for m in SWEEP_BATCHES:
            reference = None
            rows_max = -(-m // 128) * 128
            for config in SWEEP_CONFIGS:
                key = ("sweep", config, m, k, n)
                if key not in built:
                    continue
                path, plan, _ = built[key]
                layer = W4A8Linear(plan, load_library(path))
                if reference is None:
                    args, _ = _random_weights(torch, plan, rng)
                    weights = [torch.from_numpy(a).cuda() for a in args]
                    a_all = torch.randint(-127, 127, (rows_max, plan.gemms[0][0].k), dtype=torch.int8, device="cuda")
                    a_all[m:] = 0
                    sa_all = torch.rand(rows_max, device="cuda") + 0.5
                a, sa = a_all[: plan.m_pad], sa_all[: plan.m_pad]
                out = torch.full((plan.m_pad, n), float("nan"), device="cuda", dtype=torch.float16)
                gemm = layer.functions()[1]
                try:
                    gemm(a, sa, weights[1], weights[2], out)
                    torch.cuda.synchronize()
                    us = _time(lambda: gemm(a, sa, weights[1], weights[2], out))
                except Exception as err:  # pylint: disable=broad-except
                    print("sweep", config, m, k, n, "failed:", repr(err)[:200], flush=True)
                    continue
                got = out[:m].float()
                reference = got if reference is None else reference
                diff = float((got - reference).norm() / reference.norm())
                rows.append({"K": k, "N": n, "M": m, "config": list(config), "m_pad": plan.m_pad, "gemm_us": us,
                             "diff_vs_first": diff})
                print(f"sweep K={k} N={n} M={m} {config}: {us:8.1f} us (diff vs first config {diff:.1e})", flush=True)
    return rows


def time_all(directory: Path, out: Path) -> None:
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.bench import copy_bandwidth  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import load_library  # pylint: disable=import-outside-toplevel

    built = pickle.loads((directory / "built.pkl").read_bytes())
    bandwidth = copy_bandwidth(torch)
    peaks = _peak_tops(torch)
    print(f"copy {bandwidth / 1e12:.2f} TB/s, int8 {peaks[0] / 1e12:.0f} TOPS, fp16 {peaks[1] / 1e12:.0f} TFLOPS", flush=True)
    records = []
    for k, n in SHAPES:
        records += time_shape(torch, built, k, n, bandwidth, peaks, load_library)
    folder = out / torch.cuda.get_device_name().lower().replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"copy_bandwidth": bandwidth, "int8_ops_per_s": peaks[0], "fp16_flops_per_s": peaks[1]}
    sweep = time_sweep(torch, built, load_library)
    (folder / "w4a8.json").write_text(json.dumps({"meta": meta, "records": records, "sweep": sweep}, indent=1) + "\n")
    print(f"wrote {folder / 'w4a8.json'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["build", "time"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.phase == "build":
        build_all(args.directory, args.jobs)
    else:
        time_all(args.directory, args.out)


if __name__ == "__main__":
    main()
