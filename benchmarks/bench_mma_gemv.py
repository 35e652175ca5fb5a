"""M=1 W4A16 on the GPU: the GEMV on tensor-core-layout weights (what a model's single-token decode calls)
against the row-layout GEMV (``lowbit-tvm bench``'s M=1
kernel), the tensor-core kernel at M=1, cuBLAS fp16 and tinygemm, in one run; plus a sweep of the GEMV's
configs. Every kernel's output is checked against float64 before it is timed. ``*_us`` are medians of one
launch with the L2 flushed; ``stream_us`` times 8 launches in a row over 8 copies of the weights (as a model
graph runs its layers: launch latency hidden, L2 too small for the copies), divided by 8. (The committed
mma_gemv.json also holds ``mma_gemv_strided``: the GEMV's previous thread layout, a warp reading one 16-byte
piece of each of 32 tiles, measured in the same run before it was replaced.)

    python benchmarks/bench_mma_gemv.py OUT.json [--jobs 12]   # on the GPU machine
    python benchmarks/bench_mma_gemv.py OUT.json --l2-check     # the L2 flush's write-backs, see l2_check

``--l2-check`` times the M=1 kernel of ``lowbit-tvm bench``, cuBLAS fp16 and tinygemm after two kinds of
L2 flush: writing a 256 MB buffer (what ``triton.testing.do_bench`` does: it leaves the 50 MB L2 full of
dirty lines, which the timed kernel's reads then write back to HBM) and reading one (clean lines).
"""
import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, astuple

import numpy as np

SHAPES = [(4096, 4096), (4096, 12288), (4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192)]
# MmaGemvConfig fields (ky, ty, tiles, unroll, contiguous, stream): the interleaved layout with plain loads (the
# default) and the contiguous one with streaming loads (benchmarks/NOTES.md, v7)
SWEEP = [(ky, ty, tiles, 64, 0, 0) for ky in (4, 8, 16, 32, 43, 64) for ty in (1, 2) for tiles in (1, 2)] + [
    (ky, 1, tiles, 0, 1, 1) for ky in (8, 16, 32, 43, 64) for tiles in (1, 2, 4)]
COPIES = 8


def _compile(job):
    """Build one (K, N, config) in a worker process; returns the exported library path or None."""
    k, n, config, path = job
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import build_plan, default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_dispatch import Plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_mma_gemv import (  # pylint: disable=import-outside-toplevel
        MmaGemvConfig, W4A16MmaGemv, fits_tiles)

    config = MmaGemvConfig(*config)
    if not fits_tiles(n // 16, k // 16, **asdict(config)):
        return None
    op = W4A16Op(n, k, get_scheme("w4a16-g128"), 1, layout="mma", reduction="word")
    kernel = build_plan(Plan(W4A16MmaGemv(), op, config), default_target())
    export_library(kernel.module, path, overwrite=True)
    return path


def _stream_time(torch, fn, weights):
    """Per-launch time of ``fn(w)`` run over ``COPIES`` weight copies back to back."""
    from lowbit_tvm.bench import _time  # pylint: disable=import-outside-toplevel

    copies = [[t.clone() for t in weights] for _ in range(COPIES)]

    def run():
        for w in copies:
            fn(w)

    us = _time(run) / COPIES
    del copies
    torch.cuda.empty_cache()
    return us


L2_CHECK_SHAPES = [(4096, 4096), (11008, 4096), (28672, 8192)]


def _time_after_flush(torch, fn, flush, reps=200):
    """Median microseconds of ``fn`` (device events) with ``flush()`` run before each launch."""
    for _ in range(10):
        fn()
    events = []
    for _ in range(reps):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return float(np.median([s.elapsed_time(e) for s, e in events])) * 1e3


def l2_check(out):
    """Time the bench's M=1 kernels, fp16 and tinygemm after a writing and a reading L2 flush."""
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.bench import _tinygemm  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import build, default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme, quantize  # pylint: disable=import-outside-toplevel

    scheme, target = get_scheme("w4a16-g128"), default_target()
    buffer = torch.ones(64 << 20, dtype=torch.float32, device="cuda")  # 256 MB
    flushes = {"write_flush": buffer.zero_, "read_flush": lambda: buffer.sum()}
    records = []
    for k, n in L2_CHECK_SHAPES:
        weight = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32)
        qw = quantize(weight, scheme)
        kernel = build(W4A16Op(n, k, scheme, 1), target)
        weights = [torch.from_numpy(a).cuda() for a in kernel.prepare(qw)]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        xb, w16, out_t = x.bfloat16(), torch.from_numpy(weight).cuda().half(), torch.empty(1, n, device="cuda",
                                                                                          dtype=torch.float16)
        tg_packed, tg_sz = _tinygemm(torch, weight, 128)
        runs = {"ours": lambda: kernel.function(x, *weights, out_t),
                "fp16": lambda: torch.nn.functional.linear(x, w16),
                "tinygemm": lambda: torch.ops.aten._weight_int4pack_mm(xb, tg_packed, 128, tg_sz)}
        record = {"K": k, "N": n, "M": 1, "gpu": torch.cuda.get_device_name(), "rule": kernel.rule,
                  "config": str(getattr(kernel, "config", ""))}
        for flush_name, flush in flushes.items():
            for name, fn in runs.items():
                record[f"{name}_{flush_name}_us"] = _time_after_flush(torch, fn, flush)
        records.append(record)
        print(record, flush=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="JSON records to write")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--l2-check", action="store_true", help="only the L2 flush comparison (see above)")
    args = parser.parse_args()
    if args.l2_check:
        l2_check(args.out)
        return

    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.bench import _time, _tinygemm, copy_bandwidth  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import load_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import build, default_target, prepare_weights  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme, quantize, reference_matmul  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_dispatch import mma_gemv_plan  # pylint: disable=import-outside-toplevel

    jobs = [(k, n, c, f"/tmp/mma_gemv_{k}_{n}_{'_'.join(map(str, c))}.so") for k, n in SHAPES for c in SWEEP]
    with ProcessPoolExecutor(args.jobs) as pool:
        built = dict(zip([(k, n, c) for k, n, c, _ in jobs], pool.map(_compile, jobs)))
    target, scheme = default_target(), get_scheme("w4a16-g128")
    bandwidth = copy_bandwidth(torch)
    records = []
    for k, n in SHAPES:
        rng = np.random.default_rng(0)
        weight = rng.standard_normal((n, k), dtype=np.float32)
        qw = quantize(weight, scheme)
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        ref = reference_matmul(x.cpu().numpy(), qw)
        out = torch.empty(1, n, device="cuda", dtype=torch.float16)
        mma_op = W4A16Op(n, k, scheme, 1, layout="mma", reduction="word")
        mma_weights = [torch.from_numpy(a).cuda() for a in prepare_weights(mma_op, qw)]

        def timed(fn):
            out.fill_(float("nan"))
            fn()
            torch.cuda.synchronize()
            err = float(np.linalg.norm(out.cpu().double().numpy() - ref) / np.linalg.norm(ref))
            return (_time(fn) if err < 1e-2 else float("nan")), err

        sweep, functions = {}, {}
        for config in SWEEP:
            path = built[(k, n, config)]
            if path is None:
                continue
            functions[str(config)] = load_library(path)[mma_op.name]
            sweep[str(config)] = timed(lambda f=functions[str(config)]: f(x, *mma_weights, out))
        default = mma_gemv_plan(W4A16Op(n, k, scheme, 1)).config
        default_key = str(astuple(default))
        rows_kernel = build(W4A16Op(n, k, scheme, 1), target)
        rows_weights = [torch.from_numpy(a).cuda() for a in rows_kernel.prepare(qw)]
        dynamic = build(W4A16Op(n, k, scheme, None), target)
        dynamic(x, *mma_weights, out)
        w16 = torch.from_numpy(weight).cuda().half()
        tg_packed, tg_sz = _tinygemm(torch, weight, 128)
        xb = x.bfloat16()
        stream = {
            "mma_gemv_default": _stream_time(torch, lambda w: functions[default_key](x, *w, out), mma_weights),
            "rows_gemv": _stream_time(torch, lambda w: rows_kernel.function(x, *w, out), rows_weights),
            "fp16": _stream_time(torch, lambda w: torch.nn.functional.linear(x, w[0]), [w16]),
        }
        record = {
            "K": k, "N": n, "M": 1, "gpu": torch.cuda.get_device_name(),
            "mma_gemv_default": default_key,
            "mma_gemv_us": sweep, "best_mma_gemv": min(sweep, key=lambda c: np.nan_to_num(sweep[c][0], nan=np.inf)),
            "stream_us": stream,
            "rows_gemv_us": timed(lambda: rows_kernel.function(x, *rows_weights, out))[0],
            "tensor_core_us": timed(lambda: dynamic.function_for(1)(x, *mma_weights, out))[0],
            "fp16_us": _time(lambda: torch.nn.functional.linear(x, w16)),
            "tinygemm_us": _time(lambda: torch.ops.aten._weight_int4pack_mm(xb, tg_packed, 128, tg_sz)),
            "floor_us": (qw.packed.nbytes + qw.scales.nbytes + 2 * (k + n)) / bandwidth * 1e6,
        }
        records.append(record)
        best = record["best_mma_gemv"]
        print(f"K={k} N={n}: mma-gemv default {default_key} {sweep[default_key][0]:.1f} us, "
              f"best {best} {sweep[best][0]:.1f} us; stream {stream}; rows-gemv {record['rows_gemv_us']:.1f}; tensor-core "
              f"{record['tensor_core_us']:.1f}; fp16 {record['fp16_us']:.1f}; tinygemm {record['tinygemm_us']:.1f}; "
              f"floor {record['floor_us']:.1f}", flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
