"""Sweep tensor-core configs of the W4A16 kernel: build here (CPU + nvcc), time on the GPU.

    python benchmarks/sweep_w4a16.py build OUT KxN M [M ...]   # writes OUT/<name>.so + OUT/sweep.json
    python benchmarks/sweep_w4a16.py build OUT KxN M --chunk I/N   # only candidates I, I+N, ... (parallel builds)
    python benchmarks/sweep_w4a16.py build OUT KxN M --set smallm  # deep pipelines, GEMV on "mma" weights
    python benchmarks/sweep_w4a16.py time OUT [OUT ...]        # on the GPU: check vs float64, time, table
    python benchmarks/sweep_w4a16.py record ARCH TIMED.json... # best config per workload -> tuning_logs/ARCH

A manual look at the space MetaSchedule searches, to pick better rule defaults; every timed kernel is
first checked against a float64 reference on fresh random inputs.
"""
import itertools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np


def candidates(m):
    """(rule, config, reduction) triples worth timing at batch ``m``."""
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_gemv import GemvConfig, W4A16Gemv
    from lowbit_tvm.schedules.w4a16_tensor_core import TensorCoreConfig, W4A16TensorCore

    if m <= 8:
        yield W4A16Gemv(), GemvConfig(), "flat"  # the fp32-decode GEMV: the baseline
        for tx, ty, vec, rows in itertools.product((8, 16, 32), (2, 4, 8), (16, 32), (2, 4, 8)):
            if tx * ty >= 32 and ty * rows <= 32:
                yield W4A16Gemv(), GemvConfig(tx, ty, vec, 64, rows), "word"
        return
    if m <= 16:
        shapes_m, shapes_n, steps = [(1, 1)], [(4, 1), (8, 1), (2, 1)], [(8, 2), (8, 3), (4, 2), (2, 3)]
    elif m <= 32:
        shapes_m, shapes_n, steps = [(1, 2)], [(4, 1), (4, 2), (2, 2), (2, 1)], [(4, 2), (8, 2), (2, 3)]
    elif m <= 64:
        shapes_m, shapes_n, steps = [(1, 4), (2, 2)], [(4, 2), (4, 1), (2, 2)], [(4, 2), (2, 3)]
    else:
        yield from _large_m_candidates(m)
        return
    for (wm, tm), (wn, tn), (ki, pf), split in itertools.product(shapes_m, shapes_n, steps, (1, 2, 4, 8)):
        yield W4A16TensorCore(), TensorCoreConfig(wm, wn, tm, tn, ki, pf, split), "flat"


# Memory-bound batches (M <= 64) keep about N x split_k x 8 x k_inner x prefetch weight bytes in flight
# (cp.async stages ahead); the "smallm" set adds deeper pipelines to the steps above.
SMALLM_STEPS = ((8, 2), (8, 3), (4, 2), (2, 3), (2, 5), (2, 7), (4, 4), (4, 6), (8, 4), (8, 6))
SMALLM_TILES = {16: ([(1, 1)], [(4, 1), (8, 1), (2, 1)]), 32: ([(1, 2)], [(4, 1), (4, 2), (2, 2)]),
                64: ([(1, 4)], [(4, 2), (4, 1), (2, 2)])}


def smallm_candidates(m):
    """Issue 2's small-batch set: at M=1 the GEMVs with and without streaming weight loads (on tensor-core
    weights: contiguous K ranges with ``tiles`` steps loaded together, and the previous interleaved layout);
    at M=16..64 tensor-core configs with deeper pipelines."""
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_gemv import GemvConfig, W4A16Gemv
    from lowbit_tvm.schedules.w4a16_mma_gemv import MmaGemvConfig, W4A16MmaGemv
    from lowbit_tvm.schedules.w4a16_tensor_core import TensorCoreConfig, W4A16TensorCore

    if m == 1:
        yield W4A16Gemv(), GemvConfig(), "flat"
        for stream in (0, 1):
            yield W4A16Gemv(), GemvConfig(32, 4, 32, 64, 2, stream), "word"
        for ky in (16, 32, 43):
            yield W4A16MmaGemv(), MmaGemvConfig(ky, 1, 1, 64, 0, 0), "word"  # the previous default layout
            for tiles, unroll, stream in itertools.product((1, 2, 4), (0, 64), (0, 1)):
                yield W4A16MmaGemv(), MmaGemvConfig(ky, 1, tiles, unroll, 1, stream), "word"
        return
    shapes_m, shapes_n = SMALLM_TILES[16 if m <= 16 else 32 if m <= 32 else 64]
    for (wm, tm), (wn, tn), (ki, pf), split in itertools.product(shapes_m, shapes_n, SMALLM_STEPS, (1, 2, 4, 8)):
        rows, cols, depth = 16 * wm * tm, 16 * wn * tn, 16 * ki
        if (pf + 1) * (rows * (depth + 8) * 2 + cols * depth // 2) <= 160 * 1024:  # pipeline stages in shared memory
            yield W4A16TensorCore(), TensorCoreConfig(wm, wn, tm, tn, ki, pf, split, 8), "flat"


# M >= 128 (compute-bound): block tiles of 64-256 rows, warp tiles up to 64x64 (at most 128 fp32 accumulators
# per lane), at most 16 warps, the fp32 result tile staged in at most 200 KB of shared memory.
LARGE_M_TILES = ((2, 4), (1, 4), (4, 2))
LARGE_M_TILES_256 = ((4, 4), (2, 8))
LARGE_N_TILES = ((4, 2), (2, 4), (4, 4), (2, 2))
LARGE_STEPS = ((4, 2), (2, 3))


def _large_m_candidates(m):
    """Tensor-core configs at ``m`` >= 128: the tile grid above, each without split-K and with the fewest
    K slices (up to 8) that give every SM a block (configs that do not tile a shape are dropped later),
    all with M-block rasterization; plus the old M >= 128 default (without rasterization) for reference."""
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_tensor_core import TensorCoreConfig, W4A16TensorCore

    yield W4A16TensorCore(), TensorCoreConfig(2, 4, 4, 2, 4, 2, 1, 1), "flat"
    tiles_m = LARGE_M_TILES + (LARGE_M_TILES_256 if m >= 256 else ())
    for (wm, tm), (wn, tn), (ki, pf) in itertools.product(tiles_m, LARGE_N_TILES, LARGE_STEPS):
        if wm * wn > 16 or tm * tn > 16 or (16 * wm * tm) * (16 * wn * tn) * 4 > 200 * 1024:
            continue
        for split in (1, 2, 4, 8):
            yield W4A16TensorCore(), TensorCoreConfig(wm, wn, tm, tn, ki, pf, split, 8), "flat"


def _enough_blocks(op, config):
    """Keep split-K only as the fewest slices that give at least one block per SM (M >= 128)."""
    from lowbit_tvm.schedules.w4a16_dispatch import SM_COUNT  # pylint: disable=import-outside-toplevel

    if op.m is None or op.m < 128 or not hasattr(config, "split_k"):
        return True
    blocks = -(-op.m // (16 * config.warps_m * config.tile_m)) * (op.n // (16 * config.warps_n * config.tile_n))
    fewest = next((s for s in (1, 2, 4, 8) if blocks * s >= SM_COUNT), 8)
    return config.split_k in (1, fewest)


def _fits(op, rule, config):
    """Whether ``config`` tiles ``op`` exactly (the dispatcher only picks such configs)."""
    if rule.name == "w4a16-mma-gemv":
        from lowbit_tvm.schedules.w4a16_mma_gemv import fits_tiles  # pylint: disable=import-outside-toplevel

        return op.n % 16 == 0 and op.k % 16 == 0 and fits_tiles(op.n // 16, op.k // 16, **asdict(config))
    if rule.name == "w4a16-gemv" and op.reduction == "word":
        from lowbit_tvm.schedules.w4a16_gemv import fits_words  # pylint: disable=import-outside-toplevel

        return fits_words(op.n, op.k // 8, **asdict(config))
    if rule.name == "w4a16-gemv":
        return op.n % (config.ty * config.rows) == 0
    steps = op.k // (16 * config.k_inner * config.split_k)
    return op.n % (16 * config.warps_n * config.tile_n) == 0 and steps >= 3 and op.k % (16 * config.k_inner * config.split_k) == 0


_LAYOUTS = {"w4a16-gemv": ("float32", "rows"), "w4a16-mma-gemv": ("float16", "mma"),
            "w4a16-tensor-core": ("float16", "mma")}
CANDIDATE_SETS = {"default": candidates, "smallm": smallm_candidates}


def build(out, shape, batches, chunk=(0, 1), candidate_set="default"):
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import build_module, export_library
    from lowbit_tvm.kernel import PASS_CONFIG, default_target
    from lowbit_tvm.ops.w4a16 import W4A16Op
    from lowbit_tvm.quant import get_scheme
    from lowbit_tvm.tvm_api import tvm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "sweep.json"
    entries = json.loads(index.read_text()) if index.exists() else []
    k, n = (int(v) for v in shape.split("x"))
    target = default_target("sm_90")
    for m in batches:
        functions, configs = {}, {}
        for i, (rule, config, reduction) in enumerate(CANDIDATE_SETS[candidate_set](m)):
            decode, layout = _LAYOUTS[rule.name]
            op = W4A16Op(n, k, get_scheme("w4a16-g128"), m, decode, layout, reduction)
            if not _fits(op, rule, config) or not _enough_blocks(op, config):
                continue
            if i % chunk[1] != chunk[0]:
                continue
            sch = rule.apply(op.prim_func(), target, config=config)
            name = f"{op.name}_{i}"
            functions[name] = sch.mod["main"].with_attr("global_symbol", name)
            configs[name] = {"rule": rule.name, "layout": op.layout, "reduction": reduction, **asdict(config)}
        if not functions:
            continue
        with tvm.transform.PassContext(config=PASS_CONFIG):
            module = build_module(tvm.IRModule(functions), target)
        path = out / f"w4a16_{candidate_set}_m{m}_n{n}_k{k}_{chunk[0]}.so"
        export_library(module, path, overwrite=True)
        for name, config in configs.items():
            entries.append({"lib": path.name, "function": name, "m": m, "n": n, "k": k, "config": config})
        index.write_text(json.dumps(entries, indent=1))
        print(path.name, len(configs), "configs", path.stat().st_size // 1024, "KiB", flush=True)


def _time_all(entries):
    import torch  # pylint: disable=import-outside-toplevel
    import triton.testing  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.codegen import load_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme, quantize  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant.int4 import dequantize  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant.mma_layout import to_mma_layout  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.bench import _tinygemm  # pylint: disable=import-outside-toplevel

    weights, libraries, fp16_us, tiny_us = {}, {}, {}, {}
    for entry in entries:
        key = (entry["n"], entry["k"])
        if key not in weights:
            rng = np.random.default_rng()
            weight = rng.standard_normal(key, dtype=np.float32)
            qw = quantize(weight, get_scheme("w4a16-g128"))
            w64 = torch.from_numpy(dequantize(qw)).cuda().double()
            weights[key] = {
                "mma": torch.from_numpy(to_mma_layout(qw.packed)).cuda(),
                "rows": torch.from_numpy(qw.packed).cuda(),
                "scales": torch.from_numpy(qw.scales).cuda(),
                "w64": w64,
                "w16": w64.half(),
                "tinygemm": _tinygemm(torch, weight, 128),
            }
        packed = weights[key][entry["config"]["layout"]]
        scales, w64 = weights[key]["scales"], weights[key]["w64"]
        x = torch.randn(entry["m"], entry["k"], device="cuda", dtype=torch.float16)
        out_t = torch.full((entry["m"], entry["n"]), float("nan"), device="cuda", dtype=torch.float16)
        lib = Path(entry["dir"]) / entry["lib"]
        if lib not in libraries:
            libraries[lib] = load_library(lib)
        fn = libraries[lib][entry["function"]]
        fn(x, packed, scales, out_t)
        ref = x.double() @ w64.T
        err = float(torch.linalg.norm(out_t.double() - ref) / torch.linalg.norm(ref))
        us = triton.testing.do_bench(lambda: fn(x, packed, scales, out_t), warmup=10, rep=50, return_mode="median") * 1e3
        workload = (entry["n"], entry["k"], entry["m"])
        if workload not in fp16_us:  # cuBLAS once per workload, not once per config
            w16 = weights[key]["w16"]
            fp16_us[workload] = triton.testing.do_bench(
                lambda: torch.nn.functional.linear(x, w16), warmup=25, rep=100, return_mode="median"
            ) * 1e3
            tg_packed, tg_sz = weights[key]["tinygemm"]
            xb = x.bfloat16()
            tiny_us[workload] = triton.testing.do_bench(
                lambda: torch.ops.aten._weight_int4pack_mm(xb, tg_packed, 128, tg_sz), warmup=25, rep=100, return_mode="median"
            ) * 1e3
        yield {**entry, "us": us, "fp16_us": fp16_us[workload], "tinygemm_us": tiny_us[workload], "rel_err": err}


def _tflops(row, key="us"):
    return 2 * row["m"] * row["n"] * row["k"] / (row[key] * 1e-6) / 1e12


def time(outs):
    """Time every library of the sweep folders ``outs``; the rows go to ``<outs[0]>/timed.json``."""
    outs = [Path(out) for out in outs]
    entries = [{**entry, "dir": str(out)} for out in outs for entry in json.loads((out / "sweep.json").read_text())]
    rows = []
    for row in _time_all(entries):
        row.pop("dir")
        rows.append(row)
        knobs = " ".join(f"{key}={value}" for key, value in row["config"].items() if key not in ("rule", "layout"))
        print(f"K={row['k']:6d} N={row['n']:6d} M={row['m']:4d} {knobs}: {row['us']:8.1f} us {_tflops(row):5.0f} TFLOP/s  "
              f"fp16 {row['fp16_us']:7.1f} ({_tflops(row, 'fp16_us'):4.0f})  x{row['fp16_us'] / row['us']:.2f}  "
              f"tinygemm {row['tinygemm_us']:7.1f} x{row['tinygemm_us'] / row['us']:.2f}  err {row['rel_err']:.1e}", flush=True)
    (outs[0] / "timed.json").write_text(json.dumps(rows, indent=1))
    best = {}
    for row in rows:
        key = (row["k"], row["n"], row["m"])
        if row["rel_err"] < 1e-2 and (key not in best or row["us"] < best[key]["us"]):
            best[key] = row
    print("best per workload:")
    for key, row in sorted(best.items()):
        print(key, row["config"], f"{row['us']:.1f} us ({_tflops(row):.0f} TFLOP/s) x{row['fp16_us'] / row['us']:.2f} "
              f"vs fp16 ({_tflops(row, 'fp16_us'):.0f} TFLOP/s), x{row['tinygemm_us'] / row['us']:.2f} vs tinygemm")


def record(arch, timed_files):
    """Commit the fastest correct config of each timed workload to ``tuning_logs/<arch>``.

    Only workloads whose sweep also timed the rule's default config: a record must beat the default.
    """
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target
    from lowbit_tvm.ops.w4a16 import W4A16Op
    from lowbit_tvm.quant import get_scheme
    from lowbit_tvm.schedules.w4a16_dispatch import plan
    from lowbit_tvm.schedules.w4a16_gemv import GemvConfig
    from lowbit_tvm.schedules.w4a16_tensor_core import TensorCoreConfig
    from lowbit_tvm.tuning import commit_measured, database_dir, prune

    rows = {}
    for path in timed_files:
        for row in json.loads(Path(path).read_text()):
            rows.setdefault((row["k"], row["n"], row["m"]), []).append(row)
    out = database_dir(arch)
    for (k, n, m), timed in sorted(rows.items()):
        op = W4A16Op(n, k, get_scheme("w4a16-g128"), m)
        chosen = plan(op)
        default = asdict(chosen.config)
        timed = [row for row in timed if row["config"].get("reduction", "flat") == chosen.op.reduction]
        knobs = [{key: v for key, v in row["config"].items() if key not in ("rule", "layout", "reduction")} for row in timed]
        if default not in knobs:
            print(f"K={k} N={n} M={m}: the default config was not timed; no record")
            continue
        row = min((r for r in timed if r["rel_err"] < 1e-2), key=lambda r: r["us"])
        best = knobs[timed.index(row)]
        config = GemvConfig(**best) if row["config"]["rule"] == "w4a16-gemv" else TensorCoreConfig(**best)
        commit_measured(out, op, config, row["us"] * 1e-6, default_target(arch))
        default_us = timed[knobs.index(default)]["us"]
        print(f"K={k} N={n} M={m}: {config} {row['us']:.1f} us (default {default_us:.1f} us)")
    prune(out)


if __name__ == "__main__":
    if sys.argv[1] == "build":
        args, options = sys.argv[2:], {"--chunk": "0/1", "--set": "default"}
        for option in options:
            if option in args:
                options[option] = args.pop(args.index(option) + 1)
                args.remove(option)
        chunk = tuple(int(v) for v in options["--chunk"].split("/"))
        build(args[0], args[1], [int(v) for v in args[2:]], chunk, options["--set"])
    elif sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3:])
    else:
        time(sys.argv[2:])
