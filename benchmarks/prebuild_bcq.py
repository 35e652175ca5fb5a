"""Build BCQ LUT-GEMM kernels ahead of time (CPU + nvcc) for ``time_bcq_lut.py --prebuilt DIR``.

Usage: python benchmarks/prebuild_bcq.py DIR [--jobs 2]

Each case (bits, M, K, N, config) is exported as ``DIR/<op name>__<knobs>.so``; ``DIR/manifest.json`` lists
them. Building takes ~20 s per kernel on a small CPU, which is device time saved on the GPU machine.
"""
import argparse
import dataclasses
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lowbit_tvm.schedules.bcq_lut import BCQLutConfig, bcq_lut_config

SHAPES = [(4096, 4096), (4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192)]


def cases():
    """(bits, m, k, n, config) to build: defaults for 3-bit M=1/8 and 4-bit M=1, plus a few variants."""
    out = []
    for k, n in SHAPES:
        out.append((3, 1, k, n, bcq_lut_config(1, n, k)))
        out.append((4, 1, k, n, bcq_lut_config(1, n, k)))
        out.append((3, 8, k, n, bcq_lut_config(8, n, k)))
    variants = {  # (words, warps, rows, prefetch) around the defaults
        (4096, 4096): [(32, 16, 16, 8), (32, 32, 16, 8)],
        (11008, 4096): [(32, 32, 16, 8), (32, 8, 16, 8)],
        (28672, 8192): [(32, 32, 32, 8)],
        (8192, 57344): [(32, 16, 64, 8)],
    }
    for (k, n), knobs in variants.items():
        for words, warps, rows, prefetch in knobs:
            config = BCQLutConfig(words=words, warps=warps, rows=rows, prefetch=prefetch)
            out.append((3, 1, k, n, config))
    return out


def knobs_tag(config: BCQLutConfig) -> str:
    return f"w{config.words}_wp{config.warps}_r{config.rows}_t{config.tiles}_pf{config.prefetch}"


def build_case(case, directory):
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import build_module, export_library
    from lowbit_tvm.kernel import PASS_CONFIG, default_target
    from lowbit_tvm.ops.bcq_lut import BCQLutOp
    from lowbit_tvm.quant import BCQScheme
    from lowbit_tvm.schedules.bcq_lut import BCQLut
    from lowbit_tvm.tvm_api import tvm

    bits, m, k, n, config = case
    op = BCQLutOp(n, k, BCQScheme(bits=bits, group_size=128), m, config.k_multiple)
    target = default_target("sm_90")
    sch = BCQLut().apply(op.prim_func(), target, config=config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(sch.mod, target)
    path = Path(directory) / f"{op.name}__{knobs_tag(config)}.so"
    export_library(module, path, overwrite=True)
    return {"bits": bits, "m": m, "k": k, "n": n, "config": dataclasses.asdict(config), "name": op.name,
            "k_padded": op.k_padded, "file": path.name}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    Path(args.directory).mkdir(parents=True, exist_ok=True)
    todo = cases()
    with ProcessPoolExecutor(args.jobs) as pool:
        records = list(pool.map(build_case, todo, [args.directory] * len(todo)))
    (Path(args.directory) / "manifest.json").write_text(json.dumps(records, indent=1))
    print(f"built {len(records)} kernels into {args.directory}", file=sys.stderr)


if __name__ == "__main__":
    main()
