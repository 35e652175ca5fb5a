"""BCQ LUT-GEMM benchmark on the GPU: our BCQ kernel vs cuBLAS fp16, tinygemm int4 and our W4A16, one run.

Usage (on the GPU machine): python benchmarks/bench_bcq.py [--jobs 14] [--out benchmarks/results]

Every kernel is built first, in parallel worker processes (default configs; BCQ weights are random planes,
alphas and offsets: speed does not depend on their values), then timed in this process with
``triton.testing.do_bench`` medians (L2 flushed), after a check against a float64 reference. Writes
``<out>/<gpu>/bcq.json``: records with ``op, bits, M, N, K, us, fp16_us, tinygemm_us, w4a16_us, floor_us, gpu``.
"""
import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SHAPES = [(4096, 4096), (4096, 12288), (4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192)]
BATCHES = [1, 2, 4, 8]
BITS = [3, 4]
GROUP = 128


def _build_bcq(args):
    """Worker: build one BCQ kernel into ``directory``; returns (key, file, function, k_padded)."""
    bits, m, k, n, directory = args
    from lowbit_tvm.codegen import build_module, export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import PASS_CONFIG, default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.bcq_lut import BCQLutOp  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import BCQScheme  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.bcq_lut import BCQLut, bcq_lut_config  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tvm_api import tvm  # pylint: disable=import-outside-toplevel

    config = bcq_lut_config(m, n, k)
    op = BCQLutOp(n, k, BCQScheme(bits=bits, group_size=GROUP), m, config.k_multiple)
    sch = BCQLut().apply(op.prim_func(), default_target(), config=config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(sch.mod, default_target())
    path = Path(directory) / f"{op.name}.so"
    export_library(module, path, overwrite=True)
    return ("bcq", bits, m, k, n), str(path), op.name, op.k_padded


def _build_w4a16(args):
    """Worker: build our W4A16 kernel (the dispatcher's choice at this M) into ``directory``."""
    m, k, n, directory = args
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import build, default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme  # pylint: disable=import-outside-toplevel

    kernel = build(W4A16Op(n, k, get_scheme(f"w4a16-g{GROUP}"), m), default_target())
    path = Path(directory) / f"{kernel.op.name}.so"
    export_library(kernel.module, path, overwrite=True)
    return ("w4a16", m, k, n), str(path), kernel.op.name, kernel.op


def build_all(directory: Path, jobs: int) -> dict:
    """Build every kernel of the run in parallel; ``{key: (file, function, extra)}``."""
    bcq = [(bits, m, k, n, str(directory)) for k, n in SHAPES for m in BATCHES for bits in BITS]
    w4a16 = [(m, k, n, str(directory)) for k, n in SHAPES for m in BATCHES]
    built = {}
    with ProcessPoolExecutor(jobs) as pool:
        for key, path, name, extra in pool.map(_build_bcq, bcq):
            built[key] = (path, name, extra)
        for key, path, name, extra in pool.map(_build_w4a16, w4a16):
            built[key] = (path, name, extra)
    return built


def _bcq_inputs(torch, bits, n, k, k_padded, rng):
    from lowbit_tvm.quant.bcq import BCQScheme, BCQWeight, bcq_dequantize  # pylint: disable=import-outside-toplevel

    planes = rng.integers(0, 2**32, (bits, n, k // 32), dtype=np.uint32)
    alphas = (rng.random((n, k // GROUP, bits)) * 0.05 + 0.01).astype(np.float16)
    offsets = (rng.standard_normal((n, k // GROUP)) * 0.01).astype(np.float16)
    weight = BCQWeight(planes, alphas, offsets, BCQScheme(bits=bits, group_size=GROUP), (n, k))
    padded = np.zeros((bits, n, k_padded // 32), np.uint32)
    padded[..., : k // 32] = planes
    args = [torch.from_numpy(a).cuda() for a in (padded, alphas, offsets)]
    return args, bcq_dequantize(weight)


def _check(out, reference, what):
    err = float(np.linalg.norm(out.double().cpu().numpy() - reference) / np.linalg.norm(reference))
    if not err < 1e-2:
        raise RuntimeError(f"{what}: relative error {err:.2e} against float64")


def time_shape(torch, built, k, n, bandwidth, load_library):
    """Records for one shape: every (bits, M) of BCQ, with the peers at the same M."""
    from lowbit_tvm.bench import _time, _tinygemm  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import prepare_weights  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme, quantize  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n, k), dtype=np.float32)
    w16 = torch.from_numpy(weight).cuda().half()
    qw = quantize(weight, get_scheme(f"w4a16-g{GROUP}"))
    tg_packed, tg_sz = _tinygemm(torch, weight, GROUP)
    bcq_weights = {}
    records = []
    for m in BATCHES:
        x = torch.randn(m, k, device="cuda").half()
        fp16_us = _time(lambda: torch.nn.functional.linear(x, w16))
        xb = x.bfloat16()
        tiny_us = _time(lambda: torch.ops.aten._weight_int4pack_mm(xb, tg_packed, GROUP, tg_sz))
        path, name, op = built["w4a16", m, k, n]
        w4_fn = load_library(path)[name]
        w4_args = [torch.from_numpy(a).cuda() for a in prepare_weights(op, qw)]
        out = torch.empty(m, n, device="cuda").half()
        w4_us = _time(lambda: w4_fn(x, *w4_args, out))
        for bits in BITS:
            path, name, k_padded = built["bcq", bits, m, k, n]
            if (bits, k_padded) not in bcq_weights:  # the planes' padded K follows the config's K tile
                bcq_weights[bits, k_padded] = _bcq_inputs(torch, bits, n, k, k_padded, rng)
            args, dense = bcq_weights[bits, k_padded]
            fn = load_library(path)[name]
            fn(x, *args, out)
            _check(out, x.double().cpu().numpy() @ dense.T.astype(np.float64), name)
            us = _time(lambda: fn(x, *args, out))
            floor_bytes = n * k * bits / 8 + n * (k // GROUP) * (bits + 1) * 2 + 2 * m * (k + n)
            records.append({
                "op": "bcq", "bits": bits, "M": m, "N": n, "K": k, "group": GROUP, "us": us, "fp16_us": fp16_us,
                "tinygemm_us": tiny_us, "w4a16_us": w4_us, "floor_us": floor_bytes / bandwidth * 1e6,
            })
            print(f"bcq{bits} K={k:5d} N={n:5d} M={m}: {us:7.1f} us  fp16 {fp16_us:7.1f}  tinygemm {tiny_us:7.1f}  "
                  f"w4a16 {w4_us:7.1f}  floor {records[-1]['floor_us']:6.1f}  x{fp16_us / us:.2f} vs fp16",
                  flush=True)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=14, help="parallel build processes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results root")
    args = parser.parse_args()
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.bench import copy_bandwidth  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import load_library  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as directory:
        built = build_all(Path(directory), args.jobs)
        print(f"built {len(built)} kernels", flush=True)
        gpu = torch.cuda.get_device_name()
        bandwidth = copy_bandwidth(torch)
        records = []
        for k, n in SHAPES:
            records += time_shape(torch, built, k, n, bandwidth, load_library)
    for record in records:
        record["gpu"] = gpu
    folder = args.out / gpu.lower().replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bcq.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {folder / 'bcq.json'}")


if __name__ == "__main__":
    main()
