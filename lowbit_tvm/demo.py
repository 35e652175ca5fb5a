"""``lowbit-tvm demo``: the W4A16 kernel end to end on a built-in weight matrix.

Quantizes a fixed-seed 4096 x 4096 weight (group 128, symmetric), builds the kernel for CUDA into a
deployable library (compiled device code, works without a GPU), then checks it: on a GPU it runs the
library against a float64 reference and times it against fp16; without one it says so and checks the
same operator on the CPU (llvm target).
"""
import time
from pathlib import Path

import numpy as np

from .codegen import export_library
from .errors import LowbitError
from .kernel import build, default_target
from .ops.w4a16 import W4A16Op
from .quant import get_scheme, quantize, reference_matmul
from .tvm_api import tvm

N, K, M = 4096, 4096, 16
SCHEME = "w4a16-g128"


def _builtin_problem():
    rng = np.random.default_rng(2026)
    weight = rng.standard_normal((N, K), dtype=np.float32) * 0.02
    x = rng.standard_normal((M, K)).astype(np.float16)
    return x, quantize(weight, get_scheme(SCHEME)), weight


def _rel_err(out, ref):
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


def _check_on_cpu(kernel, x, qw):
    """The kernel's operator (same weight layout and decode) built for the CPU, vs float64."""
    op = kernel.op
    lib = tvm.compile(op.prim_func(), target="llvm")
    out = tvm.runtime.tensor(np.full((M, N), np.nan, dtype=np.float16))
    weights = [tvm.runtime.tensor(a) for a in kernel.prepare(qw)]
    lib[op.name](tvm.runtime.tensor(x), *weights, out)
    return _rel_err(out.numpy(), reference_matmul(x, qw))


def _check_on_gpu(kernel, x, qw, weight):
    import torch  # pylint: disable=import-outside-toplevel
    import triton.testing  # pylint: disable=import-outside-toplevel

    args = [torch.from_numpy(a).cuda() for a in [x, *kernel.prepare(qw)]]
    out = torch.full((M, N), float("nan"), dtype=torch.float16, device="cuda")
    kernel(*args, out)
    torch.cuda.synchronize()
    err = _rel_err(out.cpu().numpy(), reference_matmul(x, qw))
    w16 = torch.from_numpy(weight).cuda().half()
    run = kernel.function
    ours = triton.testing.do_bench(lambda: run(*args, out), return_mode="median") * 1e3
    fp16 = triton.testing.do_bench(lambda: torch.nn.functional.linear(args[0], w16), return_mode="median") * 1e3
    return err, ours, fp16


def run_demo(output: Path, arch: str | None = None, overwrite: bool = False) -> None:
    """Quantize, build, export and check the built-in W4A16 problem (see module docstring)."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise LowbitError(f"{output} already exists; pass --overwrite to replace it")
    print(f"[1/4] quantizing a built-in {N}x{K} weight ({SCHEME})")
    x, qw, weight = _builtin_problem()
    op = W4A16Op(N, K, qw.scheme, M)
    target = default_target(arch)
    print(f"[2/4] scheduling and compiling for {target.attrs['arch']} (nvcc; first run loads TVM's tensor intrinsics)")
    start = time.time()
    kernel = build(op, target)
    print(f"      {kernel.rule} rule, {kernel.source} schedule ({'from tuning_logs/' if kernel.source == 'tuned' else 'no tuning record for this workload: the rule default'}), {time.time() - start:.0f} s")
    output.parent.mkdir(parents=True, exist_ok=True)
    path = export_library(kernel.module, output, overwrite=overwrite)
    print(f"[3/4] wrote {path} ({path.stat().st_size // 1024} KiB, device code compiled in)")
    if tvm.cuda(0).exist:
        err, ours, fp16 = _check_on_gpu(kernel, x, qw, weight)
        print(f"[4/4] GPU: relative error vs float64 {err:.2e}; {ours:.1f} us vs fp16 {fp16:.1f} us ({fp16 / ours:.2f}x)")
    else:
        err = _check_on_cpu(kernel, x, qw)
        print(f"[4/4] no CUDA GPU here: checked the same operator on the CPU (llvm): relative error {err:.2e}")
    if err > 1e-2:
        raise LowbitError(f"relative error {err:.2e} is above 1e-2")
