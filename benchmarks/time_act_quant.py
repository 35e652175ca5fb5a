"""The W4A8 reorder + per-token quantize kernel (``schedules.w4a8_quantize``) across its thread configs (GPU).

Every config's outputs must equal the default config's (the same math, another thread split) before it is
timed; timings are medians with the L2 flushed, beside the kernel's memory floor (fp16 row read once, int8
codes written, at the measured copy bandwidth).

    python benchmarks/time_act_quant.py OUT.json [--jobs 12]   # on the GPU machine
"""
import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

SHAPES_K = (4096, 8192, 11008, 28672)
BATCHES = (16, 128, 1024, 4096)
OUTLIERS = 128
CONFIGS = ((256, 4), (512, 4), (1024, 4), (1024, 8), (512, 8))


def _op(k, m):
    from lowbit_tvm.ops.w4a8 import ActQuantOp  # pylint: disable=import-outside-toplevel

    main_k = -(-(k - OUTLIERS) // 128) * 128
    return ActQuantOp(k, main_k, OUTLIERS, m, -(-m // 64) * 64)


def _compile(job):
    k, m, config, path = job
    from lowbit_tvm.codegen import build_module, export_library  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import PASS_CONFIG, default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a8_quantize import ActQuant, ActQuantConfig  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tvm_api import tvm  # pylint: disable=import-outside-toplevel

    op = _op(k, m)
    sch = ActQuant().apply(op.prim_func(), default_target(), config=ActQuantConfig(*config))
    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(sch.mod["main"].with_attr("global_symbol", op.name), default_target())
    export_library(module, path, overwrite=True)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="JSON records to write")
    parser.add_argument("--jobs", type=int, default=12)
    args = parser.parse_args()

    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.bench import _time, copy_bandwidth  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import load_library  # pylint: disable=import-outside-toplevel

    jobs = [(k, m, c, f"/tmp/actq_{k}_{m}_{c[0]}_{c[1]}.so") for k in SHAPES_K for m in BATCHES for c in CONFIGS]
    with ProcessPoolExecutor(args.jobs) as pool:
        paths = dict(zip([(k, m, c) for k, m, c, _ in jobs], pool.map(_compile, jobs)))
    bandwidth = copy_bandwidth(torch)
    records = []
    for k in SHAPES_K:
        for m in BATCHES:
            op = _op(k, m)
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            perm = torch.from_numpy(np.random.default_rng(k).permutation(k).astype(np.int32)).cuda()
            outs = [torch.empty(op.m_pad, op.main_k, dtype=torch.int8, device="cuda"),
                    torch.empty(op.m_pad, OUTLIERS, dtype=torch.int8, device="cuda"),
                    torch.empty(op.m_pad, dtype=torch.float32, device="cuda"),
                    torch.empty(op.m_pad, dtype=torch.float32, device="cuda")]
            record = {"K": k, "M": m, "outliers": OUTLIERS, "gpu": torch.cuda.get_device_name(),
                      "floor_us": (2 * m * k + op.m_pad * k) / bandwidth * 1e6, "us": {}}
            expected = None
            for config in CONFIGS:
                fn = load_library(paths[k, m, config])[op.name]
                for out in outs:
                    out.zero_()
                fn(x, perm, *outs)
                got = [out.clone() for out in outs]
                expected = expected or got
                same = all(torch.equal(a, b) for a, b in zip(got, expected))
                record["us"][str(config)] = _time(lambda f=fn: f(x, perm, *outs)) if same else float("nan")
            records.append(record)
            print(f"K={k} M={m}: {record['us']} floor {record['floor_us']:.1f} us", flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
