"""W4A16 benchmark on the GPU: our kernel vs cuBLAS fp16, tinygemm int4 and the HBM floor.

Run on a CUDA machine: ``lowbit-tvm bench`` (or ``python -m lowbit_tvm.bench``). Writes a JSON list of
records and a PNG plot of speed-up over fp16 vs M.
"""
import json
import sys
from pathlib import Path

import numpy as np

from .ops.w4a16 import W4A16Op
from .quant import get_scheme, quantize

LLAMA_SHAPES = [(4096, 4096), (4096, 12288), (4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192)]
BATCHES = [1, 16, 32, 64, 128, 256]


def copy_bandwidth(torch, nbytes=2 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (bytes read plus bytes written)."""
    import triton.testing  # pylint: disable=import-outside-toplevel

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def _tinygemm(torch, weight, group):
    """tinygemm (torch's int4 weight-only mm) operands for ``weight`` [N, K]."""
    n, k = weight.shape
    w = torch.from_numpy(weight).cuda().float()
    grouped = w.reshape(n, k // group, group)
    scale = grouped.abs().amax(-1).clamp(min=1e-6) / 7
    codes = torch.clamp(torch.round(grouped / scale[..., None]) + 8, 0, 15).to(torch.int32).reshape(n, k)
    pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(pairs, 8)
    # tinygemm dequantizes (q - 8) * scale + zero: symmetric weights have zero = 0
    scales_zeros = torch.stack([scale, torch.zeros_like(scale)], dim=-1).transpose(0, 1).contiguous().bfloat16()
    return packed, scales_zeros


def _time(fn):
    import triton.testing  # pylint: disable=import-outside-toplevel

    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median") * 1e3


def bench_shape(torch, target, k, n, batches, scheme, bandwidth, database=None):
    """Time every batch size of one (K, N) shape; returns a list of records."""
    from .kernel import build  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n, k), dtype=np.float32)
    qw = quantize(weight, scheme)
    w16 = torch.from_numpy(weight).cuda().half()
    tg_packed, tg_sz = _tinygemm(torch, weight, scheme.group_len(k))
    dynamic = build(W4A16Op(n, k, scheme, None), target, database)
    on_device = {}  # weight layout -> the device copies every kernel of that layout reads

    def device_weights(kernel):
        if kernel.op.layout not in on_device:
            on_device[kernel.op.layout] = [torch.from_numpy(a).cuda() for a in kernel.prepare(qw)]
        return on_device[kernel.op.layout]

    dynamic_weights = device_weights(dynamic)
    records = []
    for m in batches:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        xb = x.bfloat16()
        out = torch.empty(m, n, device="cuda", dtype=torch.float16)
        kernel = build(W4A16Op(n, k, scheme, m), target, database)
        weights = device_weights(kernel)
        kernel(x, *weights, out)  # checks the arguments once
        run = kernel.function
        ours = _time(lambda: run(x, *weights, out))
        dynamic(x, *dynamic_weights, out)
        run_dynamic = dynamic.function_for(m)
        ours_dynamic = _time(lambda: run_dynamic(x, *dynamic_weights, out))
        fp16 = _time(lambda: torch.nn.functional.linear(x, w16))
        tiny = _time(lambda: torch.ops.aten._weight_int4pack_mm(xb, tg_packed, scheme.group_len(k), tg_sz))
        nbytes = qw.packed.nbytes + qw.scales.nbytes + 2 * m * (k + n)
        records.append(
            {
                "op": "w4a16",
                "scheme": scheme.name,
                "M": m,
                "N": n,
                "K": k,
                "us": ours,
                "dynamic_us": ours_dynamic,
                "fp16_us": fp16,
                "tinygemm_us": tiny,
                "floor_us": nbytes / bandwidth * 1e6,
                "rule": kernel.rule,
                "layout": kernel.op.layout,
                "schedule": kernel.source,
                "gpu": torch.cuda.get_device_name(),
            }
        )
        print(_row(records[-1]), flush=True)
    return records


def _row(r):
    return (
        f"K={r['K']:6d} N={r['N']:6d} M={r['M']:4d} ours {r['us']:8.1f} us (dynamic-M {r['dynamic_us']:8.1f})  "
        f"fp16 {r['fp16_us']:8.1f}  "
        f"tinygemm {r['tinygemm_us']:8.1f}  floor {r['floor_us']:7.1f}  x{r['fp16_us'] / r['us']:.2f} vs fp16  "
        f"[{r['rule']}, {r['schedule']}]"
    )


def plot(records, path: Path):
    """Speed-up over cuBLAS fp16 vs M, one line per shape."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, ax = plt.subplots(figsize=(8, 5))
    for k, n in sorted({(r["K"], r["N"]) for r in records}):
        rows = sorted((r for r in records if (r["K"], r["N"]) == (k, n)), key=lambda r: r["M"])
        ax.plot([r["M"] for r in rows], [r["fp16_us"] / r["us"] for r in rows], marker="o", label=f"K={k} N={n}")
    ax.axhline(1.0, color="grey", linestyle="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (batch rows)")
    ax.set_ylabel("speed-up over cuBLAS fp16")
    ax.set_title(f"lowbit_tvm W4A16 ({records[0]['scheme']}) on {records[0]['gpu']}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def run_bench(out: Path, scheme_name: str = "w4a16-g128", batches=None, tuned: bool = True, shapes=None):
    """Benchmark ``shapes`` (K, N) (default: the Llama shapes); write ``<out>/<gpu>/w4a16.json`` and ``.png``."""
    import torch  # pylint: disable=import-outside-toplevel

    from .codegen import detect_cuda_arch  # pylint: disable=import-outside-toplevel
    from .errors import LowbitError  # pylint: disable=import-outside-toplevel
    from .kernel import default_target  # pylint: disable=import-outside-toplevel
    from .tuning import database_dir, open_database  # pylint: disable=import-outside-toplevel

    if not torch.cuda.is_available():
        raise LowbitError("lowbit-tvm bench needs a CUDA GPU; none was found")
    arch = detect_cuda_arch()
    database = open_database(database_dir(arch)) if tuned else None
    bandwidth = copy_bandwidth(torch)
    gpu = torch.cuda.get_device_name()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s on {gpu}; tuning database: {database is not None}")
    records = []
    for k, n in shapes or LLAMA_SHAPES:
        records += bench_shape(torch, default_target(arch), k, n, batches or BATCHES, get_scheme(scheme_name),
                               bandwidth, database)
    folder = Path(out) / gpu.replace(" ", "_").lower()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "w4a16.json"
    records = _merge(path, records)
    path.write_text(json.dumps(records, indent=1))
    plot(records, folder / "w4a16.png")
    print("wrote", path)
    return records


def _merge(path: Path, records: list) -> list:
    """``records`` plus the earlier records in ``path`` of workloads (scheme, K, N, M) not measured now."""
    if not path.exists():
        return records
    measured = {(r["scheme"], r["K"], r["N"], r["M"]) for r in records}
    kept = [r for r in json.loads(path.read_text()) if (r["scheme"], r["K"], r["N"], r["M"]) not in measured]
    if kept:
        print(f"kept {len(kept)} earlier records of workloads not measured in this run from {path}")
    return sorted(kept + records, key=lambda r: (r["scheme"], r["K"], r["N"], r["M"]))


if __name__ == "__main__":
    from .cli import main  # pylint: disable=import-outside-toplevel

    sys.exit(main(["bench", *sys.argv[1:]]))
