"""One timing of the W4A4 layer against our W4A8 on the local GPU (records what int4 mma emulation costs on sm_90).

Usage (GPU machine): python benchmarks/time_w4a4.py [--m 1024] [--k 4096] [--n 4096] [--out DIR]

W4A4 is built through ``build_plan`` (the dispatcher refuses it on sm_90). Both layers have 128 int8 outlier
channels and real quantized random weights; each is first checked against the float64 reference of its math,
then timed (``triton.testing.do_bench`` median, L2 flushed): the whole layer (quantize + GEMMs) and the quantize
kernel alone. Writes ``<out>/<gpu>/w4a4_emulation.json``.
"""
import argparse
import json
from pathlib import Path

import numpy as np


def _time(fn):
    import triton.testing  # pylint: disable=import-outside-toplevel

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def measure(m: int, k: int, n: int) -> dict:
    """Build, check and time W4A4 and W4A8 at one shape; one JSON-ready record."""
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import atom, atom_w4a4  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a8_dispatch import plan_linear  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build_plan  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    scheme = atom.AtomScheme(4, 128, 128)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, rng.choice(k, 128, replace=False)] *= 100
    x = x.astype(np.float16)
    aw = atom.calibrate(rng.standard_normal((n, k)), x.astype(np.float64), scheme)
    xt = torch.from_numpy(x).cuda()
    record = {"M": m, "K": k, "N": n, "outliers": 128, "gpu": torch.cuda.get_device_name(), "arch": str(default_target().attrs["arch"])}
    for name, act_bits, reference in (("w4a4", 4, atom_w4a4.reference_matmul), ("w4a8", 8, atom.reference_matmul)):
        layer = build_plan(plan_linear(m, n, k, scheme, act_bits=act_bits), default_target())
        weights = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in layer.prepare(aw)]
        workspace = [torch.empty(s, dtype=getattr(torch, d), device="cuda") for s, d in layer.workspace()]
        out = torch.full((layer.plan.m_pad, n), float("nan"), dtype=torch.float16, device="cuda")
        layer(xt, weights, workspace, out)
        ref = reference(x, aw)
        record[f"{name}_err"] = float(np.linalg.norm(out[:m].double().cpu().numpy() - ref) / np.linalg.norm(ref))
        quant = layer.functions()[0]
        record[f"{name}_us"] = _time(layer.launcher(xt, weights, workspace, out))
        record[f"{name}_quant_us"] = _time(lambda: quant(xt, weights[0], *workspace))
        record[f"{name}_gemm_tops"] = 2 * m * n * k / ((record[f"{name}_us"] - record[f"{name}_quant_us"]) * 1e-6) / 1e12
    record["w4a4_over_w4a8"] = record["w4a4_us"] / record["w4a8_us"]
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    record = measure(args.m, args.k, args.n)
    folder = Path(args.out) / record["gpu"].lower().replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w4a4_emulation.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
