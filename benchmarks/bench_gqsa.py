"""GQSA benchmark on the GPU: our block-sparse int4 kernel vs cuBLAS fp16 and our dense W4A16, one run.

Usage (on the GPU machine): python benchmarks/bench_gqsa.py [--jobs 14] [--out benchmarks/results]

Weights are random (speed does not depend on their values): balanced-row GQSA weights (every row keeps
``round((1 - sparsity) * K / g)`` groups at random column blocks, random codes, random fp16 scales) and random
W4A16 g128 words for the dense kernel. Every kernel is built first in parallel worker processes (default
configs, or tuned records where ``tuning_logs/sm_90`` has them), then each GQSA kernel is checked against a
float64 product with its dense reconstruction and timed with ``triton.testing.do_bench`` medians (L2 flushed).
Writes ``<out>/<gpu>/gqsa.json``: records with ``op, M, N, K, group, sparsity, slots, us, fp16_us, w4a16_us,
floor_us, w4a16_floor_us, bytes, rel_err, rule, schedule, config, best_us, best_config, sweep_us, gpu``;
``floor_us`` is the kernel's bytes (words, scales, column blocks, activations, output) over the measured copy
bandwidth, ``sweep_us`` the times of the ``SWEEP`` configs on the same weights. The committed JSON also has
``dispatch_config`` / ``dispatch_us``: the dispatcher's config chosen after that run from its sweep, and its time
in the sweep (null where that config was not timed); ``run_us`` / ``run_config`` are the run's default.

``--commit-records GQSA_JSON`` (CPU): tuning records for the workloads where the sweep beat the dispatcher.
"""
import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lowbit_tvm.quant.gqsa import GQSAScheme, GQSAWeight, to_slots

SHAPES = [(4096, 22016), (8192, 57344), (28672, 8192), (11008, 4096)]  # (K, N)
BATCHES = [1, 16, 64]
SPARSITIES = [0.0, 0.3, 0.5, 0.7]
GROUPS = {128: SPARSITIES, 64: [0.5]}  # group -> sparsities benchmarked
W4A16_GROUP = 128
# GEMV configs (tx, ty, vec, unroll, rows) also timed beside the default, on the default's weights: per M,
# (configs, the (group, sparsity) pairs swept)
SWEEP = {
    1: ([(32, 4, 32, 64, 1), (32, 4, 32, 64, 2), (32, 2, 32, 64, 4), (16, 8, 32, 64, 2), (16, 4, 32, 64, 4),
         (8, 8, 32, 64, 4), (32, 4, 16, 64, 2), (16, 8, 16, 64, 1), (32, 8, 32, 64, 2), (8, 16, 32, 64, 2),
         (16, 8, 32, 64, 1), (32, 8, 32, 64, 1)], [(g, s) for g, ss in GROUPS.items() for s in ss]),
    16: ([(32, 4, 16, 64, 1), (16, 4, 32, 64, 1), (32, 2, 32, 64, 1), (8, 8, 32, 64, 1)], [(128, 0.5)]),
}


def kept_groups(k, group, sparsity):
    """Groups kept per row by balanced pruning at ``sparsity``."""
    return int(round((1 - sparsity) * (k // group)))


def _build_gqsa(args):
    """Worker: build one GQSA kernel (default config, or ``config`` on the default's slots); returns
    (key, file, function, (op, rule, source, config))."""
    m, k, n, group, sparsity, config, directory = args
    from lowbit_tvm.codegen import build_module, export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.gqsa_kernel import PASS_CONFIG  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.gqsa_dispatch import plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.gqsa_gemv import GQSAGemvConfig  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tvm_api import tvm  # pylint: disable=import-outside-toplevel

    chosen = plan(n, k, group, kept_groups(k, group, sparsity), m)
    config = chosen.config if config is None else GQSAGemvConfig(*config)
    sch = chosen.rule.apply(chosen.op.prim_func(), default_target(), config=config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(sch.mod, default_target())
    tag = "_".join(str(v) for v in (config.tx, config.ty, config.vec, config.unroll, config.rows))
    path = Path(directory) / f"{chosen.op.name}__{tag}.so"
    export_library(module, path, overwrite=True)
    key = ("gqsa", m, k, n, group, sparsity, None if config == chosen.config else tag)
    return key, str(path), chosen.op.name, (chosen.op, chosen.rule.name, "default", config)


def _build_w4a16(args):
    """Worker: build our dense W4A16 kernel (the dispatcher's choice at this M)."""
    m, k, n, directory = args
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import build, default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme  # pylint: disable=import-outside-toplevel

    kernel = build(W4A16Op(n, k, get_scheme(f"w4a16-g{W4A16_GROUP}"), m), default_target())
    path = Path(directory) / f"{kernel.op.name}.so"
    export_library(kernel.module, path, overwrite=True)
    return ("w4a16", m, k, n), str(path), kernel.op.name, kernel.op


def build_all(directory: Path, jobs: int) -> dict:
    """Build every kernel of the run in parallel; ``{key: (file, function, extra)}``."""
    gqsa = [(m, k, n, g, s, None, str(directory))
            for k, n in SHAPES for m in BATCHES for g, ss in GROUPS.items() for s in ss]
    gqsa += [(m, k, n, g, s, c, str(directory)) for k, n in SHAPES for m, (configs, pairs) in SWEEP.items()
             for g, s in pairs for c in configs if _sweep_fits(c, m, k, n, g, s)]
    w4a16 = [(m, k, n, str(directory)) for k, n in SHAPES for m in BATCHES]
    built = {}
    with ProcessPoolExecutor(jobs) as pool:
        jobs_ = [pool.submit(_build_gqsa, a) for a in gqsa] + [pool.submit(_build_w4a16, a) for a in w4a16]
        for job in jobs_:
            try:
                key, path, name, extra = job.result()
                built[key] = (path, name, extra)
            except Exception as error:  # pylint: disable=broad-except
                print(f"build failed: {error}", flush=True)
    return built


def _sweep_fits(config, m, k, n, group, sparsity):
    from lowbit_tvm.schedules.gqsa_dispatch import plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.gqsa_gemv import GQSAGemvConfig  # pylint: disable=import-outside-toplevel

    chosen = plan(n, k, group, kept_groups(k, group, sparsity), m)
    config = GQSAGemvConfig(*config)
    return config != chosen.config and config.fits(n, chosen.op.words)


def random_gqsa(n, k, group, sparsity, rng):
    """A random balanced-row GQSA weight (random kept blocks, codes and scales)."""
    groups, kept = k // group, kept_groups(k, group, sparsity)
    cols = np.sort(np.argsort(rng.random((n, groups), dtype=np.float32), axis=1)[:, :kept], axis=1)
    indptr = (np.arange(n + 1, dtype=np.int64) * kept).astype(np.int32)
    blocks = rng.integers(0, 2**32, (n * kept, group // 8), dtype=np.uint32)
    scales = (rng.random(n * kept, dtype=np.float32) * 0.02 + 0.005).astype(np.float16)
    scheme = GQSAScheme(group, sparsity, "row", "magnitude")
    return GQSAWeight(indptr, cols.reshape(-1).astype(np.int32), blocks, scales, scheme, (n, k))


def dense_on_gpu(torch, words, scales, indices, k, group):
    """The float32 dense reconstruction of slot-form weights (torch tensors, on their device)."""
    n, slots = scales.shape
    shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int64)
    codes = (words.view(torch.int32).to(torch.int64)[..., None] >> shifts) & 15
    values = (codes.reshape(n, slots, group).float() - 8) * scales.float()[..., None]
    dense = torch.zeros(n, k // group, group, device=words.device)
    dense.scatter_add_(1, indices.long()[..., None].expand(-1, -1, group), values)
    return dense.reshape(n, k)


def _tag(config):
    return "_".join(str(v) for v in (config.tx, config.ty, config.vec, config.unroll, config.rows))


def _check(torch, out, x, dense, what):
    ref = x.double() @ dense.double().T
    err = float((out.double() - ref).norm() / ref.norm())
    if not err < 1e-2:
        raise RuntimeError(f"{what}: relative error {err:.2e} against float64")
    return err


def _w4a16_args(torch, op, rng):
    from lowbit_tvm.kernel import prepare_weights  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import QuantizedWeight  # pylint: disable=import-outside-toplevel

    packed = rng.integers(0, 2**32, (op.n, op.k // 8), dtype=np.uint32)
    scales = (rng.random((op.n, op.k // W4A16_GROUP), dtype=np.float32) * 0.02 + 0.005).astype(np.float16)
    qw = QuantizedWeight(packed, scales, None, op.scheme, (op.n, op.k))
    return [torch.from_numpy(a).cuda() for a in prepare_weights(op, qw)], qw.packed.nbytes + qw.scales.nbytes


def time_shape(torch, built, k, n, bandwidth, load_library):
    """Records of one shape: every (M, group, sparsity), with cuBLAS fp16 and dense W4A16 at the same M."""
    from lowbit_tvm.bench import _time  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
    weights, records = {}, []
    for m in BATCHES:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        out = torch.empty(m, n, device="cuda", dtype=torch.float16)
        fp16_us = _time(lambda: torch.nn.functional.linear(x, w16))
        w4_us = w4_floor = None
        if ("w4a16", m, k, n) in built:
            path, name, op = built["w4a16", m, k, n]
            w4_fn = load_library(path)[name]
            w4_args, w4_bytes = _w4a16_args(torch, op, rng)
            w4_us = _time(lambda: w4_fn(x, *w4_args, out))
            w4_floor = (w4_bytes + 2 * m * (k + n)) / bandwidth * 1e6
        for group, sparsities in GROUPS.items():
            for sparsity in sparsities:
                key = ("gqsa", m, k, n, group, sparsity, None)
                if key not in built:
                    continue
                path, name, (op, rule, source, config) = built[key]
                if (group, sparsity, op.slots) not in weights:
                    qw = random_gqsa(n, k, group, sparsity, rng)
                    args = [torch.from_numpy(a).cuda() for a in to_slots(qw, op.slots)]
                    weights[group, sparsity, op.slots] = args, dense_on_gpu(torch, *args, k, group)
                args, dense = weights[group, sparsity, op.slots]
                fn = load_library(path)[name]
                out.fill_(float("nan"))
                fn(x, *args, out)
                err = _check(torch, out, x, dense, name)
                us = _time(lambda: fn(x, *args, out))
                sweep = {_tag(config): us}
                for other, (other_path, _, extra) in built.items():
                    if other[:6] == key[:6] and other[6] is not None:
                        other_fn = load_library(other_path)[name]
                        out.fill_(float("nan"))
                        other_fn(x, *args, out)
                        _check(torch, out, x, dense, f"{name} {other[6]}")
                        sweep[other[6]] = _time(lambda: other_fn(x, *args, out))
                nbytes = sum(a.numel() * a.element_size() for a in args) + 2 * m * (k + n)
                records.append({
                    "op": "gqsa", "M": m, "N": n, "K": k, "group": group, "sparsity": sparsity, "slots": op.slots,
                    "us": us, "fp16_us": fp16_us, "w4a16_us": w4_us, "floor_us": nbytes / bandwidth * 1e6,
                    "w4a16_floor_us": w4_floor, "bytes": nbytes, "rel_err": err, "rule": rule, "schedule": source,
                    "config": _tag(config), "best_us": min(sweep.values()), "best_config": min(sweep, key=sweep.get),
                    "sweep_us": sweep,
                })
                r = records[-1]
                print(f"gqsa g{group} s{sparsity:.1f} K={k:5d} N={n:5d} M={m:2d}: {us:8.1f} us  fp16 {fp16_us:8.1f}  "
                      f"w4a16 {w4_us or float('nan'):8.1f}  floor {r['floor_us']:7.1f}  x{fp16_us / us:.2f} vs fp16  "
                      f"x{(w4_us or float('nan')) / us:.2f} vs w4a16  err {err:.1e}  best {r['best_us']:.1f} "
                      f"[{r['best_config']}]", flush=True)
        del x, out
    return records


def commit_records(results: Path, min_gain: float = 0.03) -> None:
    """Add to ``tuning_logs/sm_90`` a record for each swept workload of ``results`` (a ``gqsa.json``) whose
    fastest config beats the dispatcher's default (``dispatch_us``) by more than ``min_gain``; CPU only."""
    from lowbit_tvm.gqsa_kernel import commit_measured  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.gqsa_gemv import GQSAGemvConfig  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tuning import database_dir, open_database, prune  # pylint: disable=import-outside-toplevel

    target = default_target("sm_90")
    folder = database_dir("sm_90")
    database = open_database(folder, create=True)
    for r in json.loads(results.read_text()):
        if r.get("dispatch_us") is None or r["best_us"] >= r["dispatch_us"] * (1 - min_gain):
            continue
        config = GQSAGemvConfig(*(int(v) for v in r["best_config"].split("_")))
        kept = kept_groups(r["K"], r["group"], r["sparsity"])
        commit_measured(database, r["N"], r["K"], r["group"], kept, r["M"], config, r["best_us"] * 1e-6, target)
        print(f"record: K={r['K']} N={r['N']} M={r['M']} g{r['group']} s{r['sparsity']}: {r['best_config']} "
              f"{r['best_us']:.1f} us (default {r['dispatch_config']} {r['dispatch_us']:.1f} us)", flush=True)
    prune(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=14, help="parallel build processes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results root")
    parser.add_argument("--commit-records", type=Path, default=None, metavar="GQSA_JSON",
                        help="no benchmark: add tuning records from a finished run's sweep (see commit_records)")
    args = parser.parse_args()
    if args.commit_records:
        commit_records(args.commit_records)
        return
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.bench import copy_bandwidth  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import load_library  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as directory:
        built = build_all(Path(directory), args.jobs)
        print(f"built {len(built)} kernels", flush=True)
        gpu = torch.cuda.get_device_name()
        bandwidth = copy_bandwidth(torch)
        print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
        records = []
        for k, n in SHAPES:
            try:
                records += time_shape(torch, built, k, n, bandwidth, load_library)
            except Exception as error:  # pylint: disable=broad-except
                print(f"shape K={k} N={n} failed: {error}", flush=True)
            folder = args.out / gpu.lower().replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for record in records:
                record["gpu"] = gpu
            (folder / "gqsa.json").write_text(json.dumps(records, indent=1) + "\n")  # after every shape
    print(f"wrote {folder / 'gqsa.json'}")


if __name__ == "__main__":
    main()
