"""Paged decode attention on the GPU: our split-KV kernel vs TVM's ``batch_decode_paged_kv`` (Llama-2-7B dims).

    python benchmarks/bench_decode_attention.py OUT.json [--batches 1 16] [--contexts 128 512 2048] [--sweep]

Both kernels are built here through our codegen (nvcc, PDL on sm_90, as in the model graph) and called on the
same random pages (page table shuffled) with ``context`` tokens per sequence. Per (batch, context), for each
kernel:

* ``kernel_us_cold``: GPU time of its kernels per call (torch.profiler / CUPTI), the L2 cache flushed before
  each call (in a decode step the other layers' weights evict the layer's K/V); what ``e2e_llama.py profile``
  reports for the graph;
* ``kernel_us_hot``: the same without the flush (K/V of small contexts stay in the 50 MB L2);
* ``do_bench_us``: ``triton.testing.do_bench`` (flushes L2 too; includes launch gaps);
* ``floor_us``: the K/V bytes over 3.35 TB/s (H100 SXM HBM3 peak), and ``gbps_cold`` achieved.

Each record also holds the largest difference of each kernel's outputs and lse from TVM's. ``--sweep`` adds
other settings of our kernel (``SWEEP``: threads per block, target blocks, most ranges), to pick the default.
"""
import argparse
import json
import math
import sys
from pathlib import Path

HBM_BYTES_PER_S = 3.35e12
LLAMA2 = {"num_q_heads": 32, "num_kv_heads": 32, "head_dim": 128}


# Other settings of our kernel timed with --sweep: (threads, target_blocks, max_splits).
SWEEP = ((256, 1024, 32), (128, 2048, 64), (128, 512, 16), (256, 2048, 64))


def _build(op, target, sweep: bool):
    from lowbit_tvm.codegen import build_module  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.decode_attention import SplitPlan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.decode_attention import (  # pylint: disable=import-outside-toplevel
        DecodeAttentionConfig, decode_attention_cuda)
    from lowbit_tvm.tvm_api import kv_cache  # pylint: disable=import-outside-toplevel

    # pylint: disable-next=protected-access
    tvms = kv_cache._attention_decode(op.num_kv_heads, op.num_q_heads, op.head_dim, op.dtype, False, {}, target)
    funcs = {"tvm": tvms, "ours": decode_attention_cuda(op)}
    for threads, blocks, splits in SWEEP if sweep else ():
        config = DecodeAttentionConfig(threads, SplitPlan(target_blocks=blocks, max_splits=splits))
        funcs[f"sweep_t{threads}_b{blocks}_s{splits}"] = decode_attention_cuda(op, config)
    return {name: build_module(func.with_attr("global_symbol", name), target)[name] for name, func in funcs.items()}


def _inputs(op, batch: int, context: int, seed: int = 0):
    import torch  # pylint: disable=import-outside-toplevel

    gen = torch.Generator(device="cuda").manual_seed(seed)
    per_seq = math.ceil(context / op.page_size)
    num_pages = batch * per_seq + 1
    pages = torch.randn((num_pages, 2, op.num_kv_heads, op.page_size, op.head_dim), generator=gen, device="cuda",
                        dtype=torch.float16)
    table = torch.randperm(num_pages, generator=gen, device="cuda")[: batch * per_seq].to(torch.int32)
    q = torch.randn((batch, op.num_q_heads, op.head_dim), generator=gen, device="cuda", dtype=torch.float16)
    indptr = torch.arange(0, batch + 1, device="cuda", dtype=torch.int32) * per_seq
    last = torch.full((batch,), context - (per_seq - 1) * op.page_size, device="cuda", dtype=torch.int32)
    zeros = torch.zeros((batch,), device="cuda", dtype=torch.int32)
    return [q, pages, indptr, table, last, zeros, zeros + context]


def _caller(func, inputs, op):
    import torch  # pylint: disable=import-outside-toplevel
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    batch = inputs[0].shape[0]
    out = torch.empty((batch, op.num_q_heads, op.head_dim), device="cuda", dtype=torch.float16)
    lse = torch.empty((batch, op.num_q_heads), device="cuda", dtype=torch.float32)
    args = [tvm_ffi.from_dlpack(t) for t in inputs + [out, lse]] + [0, 1.0, 1e4, op.head_dim ** -0.5]
    return (lambda: func(*args)), out, lse


def _kernel_us(fn, prefix: str, calls: int, flush=None) -> float:
    """GPU time per call of the kernels whose names start with ``prefix`` (CUPTI through torch.profiler)."""
    import torch  # pylint: disable=import-outside-toplevel
    from torch.profiler import ProfilerActivity, profile  # pylint: disable=import-outside-toplevel

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            if flush is not None:
                flush()
            fn()
        torch.cuda.synchronize()
    total = 0.0
    for event in prof.key_averages():
        if event.key.startswith(prefix):
            total += getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
    return total / calls


def _do_bench_us(fn) -> float | None:
    try:
        from triton.testing import do_bench  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return float(do_bench(fn, warmup=25, rep=200)) * 1e3


def measure(funcs, op, batch: int, context: int, calls: int = 50) -> dict:
    """One record: both kernels at ``batch`` sequences of ``context`` tokens."""
    import torch  # pylint: disable=import-outside-toplevel

    inputs = _inputs(op, batch, context)
    scratch = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    flush = scratch.zero_
    kv_bytes = op.kv_bytes(batch, context)
    record = {"batch": batch, "context": context, "kv_bytes": kv_bytes, "floor_us": kv_bytes / HBM_BYTES_PER_S * 1e6}
    outs = {}
    for name, func in funcs.items():
        fn, out, lse = _caller(func, inputs, op)
        cold = _kernel_us(fn, name, calls, flush)
        record[name] = {"kernel_us_cold": cold, "kernel_us_hot": _kernel_us(fn, name, calls),
                        "do_bench_us": _do_bench_us(fn), "gbps_cold": kv_bytes / cold / 1e3 if cold else None}
        fn()
        torch.cuda.synchronize()
        outs[name] = (out.float().clone(), lse.clone())
    for name, (out, lse) in outs.items():
        record[name]["max_out_diff_vs_tvm"] = float((out - outs["tvm"][0]).abs().max())
        record[name]["max_lse_diff_vs_tvm"] = float((lse - outs["tvm"][1]).abs().max())
    record["max_out_diff"] = record["ours"]["max_out_diff_vs_tvm"]
    cold = record["tvm"]["kernel_us_cold"], record["ours"]["kernel_us_cold"]
    record["speedup_cold"] = cold[0] / cold[1] if cold[1] else None
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_json", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--sweep", action="store_true", help="also time the SWEEP settings of our kernel")
    args = parser.parse_args(argv)

    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.decode_attention import DecodeAttentionOp  # pylint: disable=import-outside-toplevel

    op = DecodeAttentionOp(**LLAMA2)
    funcs = _build(op, default_target(), args.sweep)
    records = []
    for batch in args.batches:
        for context in args.contexts:
            rec = measure(funcs, op, batch, context)
            rec["gpu"] = torch.cuda.get_device_name()
            records.append(rec)
            args.out_json.write_text(json.dumps(records, indent=1))  # what is done survives a time limit
            print(f"batch {batch:3d} context {context:5d}: floor {rec['floor_us']:6.2f} us | "
                  f"tvm {rec['tvm']['kernel_us_cold']:7.2f} us | ours {rec['ours']['kernel_us_cold']:7.2f} us "
                  f"(hot {rec['ours']['kernel_us_hot']:6.2f}) | diff {rec['max_out_diff']:.1e}"
                  + "".join(f" | {k} {v['kernel_us_cold']:.2f}" for k, v in rec.items() if k.startswith("sweep")),
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
