"""Time the BCQ LUT-GEMM kernel against cuBLAS fp16 (device helper).

Usage: python benchmarks/time_bcq_lut.py [--bits 3 4] [--m 1 8] [--shapes 4096x22016 ...] [--sweep]
       python benchmarks/time_bcq_lut.py --prebuilt DIR [--only NAME_SUBSTRING] [--profile]

Prints one row per (bits, K, N, M, config): kernel microseconds (median, both kernels: lookups and the
K-slice sum), cuBLAS fp16 microseconds and the speed-up. ``--sweep`` also times a few configs around the
default; ``--prebuilt`` times the kernels that ``prebuild_bcq.py`` exported (no compiler time on the GPU machine);
``--profile`` then just runs each selected kernel a few times (for ncu).
"""
import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import triton.testing

from lowbit_tvm.codegen import build_module, load_library
from lowbit_tvm.kernel import PASS_CONFIG, default_target
from lowbit_tvm.ops.bcq_lut import BCQLutOp
from lowbit_tvm.quant import BCQScheme
from lowbit_tvm.schedules.bcq_lut import BCQLut, BCQLutConfig, bcq_lut_config
from lowbit_tvm.tvm_api import tvm

SHAPES = ["4096x4096", "4096x22016", "11008x4096", "8192x57344", "28672x8192"]


def build(op, config):
    """The compiled kernel function of ``op`` under ``config``."""
    sch = BCQLut().apply(op.prim_func(), default_target(), config=config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        return build_module(sch.mod, default_target())[op.name]


def variants(config, sweep):
    """The default config, and with ``sweep`` a few neighbours (same block rows or same rows per warp)."""
    out = [config]
    if sweep:
        block = config.warps * config.rows
        for warps in (8, 16, 32):
            if warps != config.warps and block % warps == 0 and block // warps >= 4 and warps * 32 <= 1024:
                out.append(dataclasses.replace(config, warps=warps, rows=block // warps))
        for rows in (config.rows // 2, config.rows * 2):
            if rows >= 4:
                out.append(dataclasses.replace(config, rows=rows))
    return out


def inputs(bits, m, n, k, k_padded):
    rng = np.random.default_rng(0)
    planes = torch.from_numpy(rng.integers(0, 2**32, (bits, n, k_padded // 32), dtype=np.uint32)).cuda()
    alphas = torch.rand(n, k // 128, bits, device="cuda").half()
    offsets = torch.rand(n, k // 128, device="cuda").half()
    x = torch.randn(m, k, device="cuda").half()
    return x, planes, alphas, offsets


def fp16_us(m, k, n, cache={}):  # pylint: disable=dangerous-default-value
    """cuBLAS fp16 ``x @ W.T`` microseconds (median), cached per shape."""
    if (m, k, n) not in cache:
        w16 = torch.randn(n, k, device="cuda").half()
        x16 = torch.randn(m, k, device="cuda").half()
        cache[m, k, n] = triton.testing.do_bench(lambda: torch.nn.functional.linear(x16, w16), return_mode="median") * 1e3
    return cache[m, k, n]


def report(bits, m, k, n, config, fn, k_padded, profile=False):
    args = inputs(bits, m, n, k, k_padded)
    out = torch.empty(m, n, device="cuda").half()
    if profile:
        for _ in range(5):
            fn(*args, out)
        torch.cuda.synchronize()
        return
    us = triton.testing.do_bench(lambda: fn(*args, out), return_mode="median") * 1e3
    fp16 = fp16_us(m, k, n)
    knobs = f"words={config.words} warps={config.warps} rows={config.rows} tiles={config.tiles} pf={config.prefetch}"
    print(f"bcq{bits} K={k:5d} N={n:5d} M={m} {knobs:46s}: {us:7.1f} us  fp16 {fp16:7.1f} us  x{fp16 / us:.2f}",
          flush=True)


def time_one(bits, m, k, n, config):
    op = BCQLutOp(n, k, BCQScheme(bits=bits, group_size=128), m, config.k_multiple)
    try:
        fn = build(op, config)
    except Exception as err:  # pylint: disable=broad-except
        print(f"bcq{bits} K={k} N={n} M={m} {config}: build failed: {str(err).splitlines()[-1][:200]}", flush=True)
        return
    report(bits, m, k, n, config, fn, op.k_padded)


def time_prebuilt(directory, only, profile):
    for rec in json.loads((Path(directory) / "manifest.json").read_text()):
        if only and only not in rec["file"]:
            continue
        fn = load_library(Path(directory) / rec["file"])[rec["name"]]
        config = BCQLutConfig(**rec["config"])
        report(rec["bits"], rec["m"], rec["k"], rec["n"], config, fn, rec["k_padded"], profile)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", type=int, nargs="+", default=[3])
    parser.add_argument("--m", type=int, nargs="+", default=[1])
    parser.add_argument("--shapes", nargs="+", default=SHAPES)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--prebuilt")
    parser.add_argument("--only")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.prebuilt:
        time_prebuilt(args.prebuilt, args.only, args.profile)
        return
    for shape in args.shapes:
        k, n = (int(v) for v in shape.split("x"))
        for m in args.m:
            for bits in args.bits:
                for config in variants(bcq_lut_config(m, n, k), args.sweep):
                    time_one(bits, m, k, n, config)

if __name__ == "__main__":
    main()
