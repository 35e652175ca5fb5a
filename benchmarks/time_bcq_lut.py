"""Time the first BCQ LUT-GEMM kernel against cuBLAS fp16 (device helper; the full bench comes with issue 3).

Usage: python benchmarks/time_bcq_lut.py [bits]
"""
import sys

import numpy as np
import torch
import triton.testing

from lowbit_tvm.codegen import build_module
from lowbit_tvm.kernel import PASS_CONFIG, default_target
from lowbit_tvm.ops.bcq_lut import BCQLutOp
from lowbit_tvm.quant import BCQScheme
from lowbit_tvm.schedules.bcq_lut import BCQLut, BCQLutConfig, bcq_lut_config
from lowbit_tvm.tvm_api import tvm


def main(bits):
    scheme = BCQScheme(bits=bits, group_size=128)
    for k, n in [(4096, 4096), (8192, 57344)]:
        for m, rows in ((1, 128), (1, 64), (1, 32), (8, 128)):
            op = BCQLutOp(n, k, scheme, m)
            config = BCQLutConfig(rows, bcq_lut_config(m, n, k).chunks)
            sch = BCQLut().apply(op.prim_func(), default_target(), config=config)
            with tvm.transform.PassContext(config=PASS_CONFIG):
                fn = build_module(sch.mod, default_target())[op.name]
            rng = np.random.default_rng(0)
            planes = torch.from_numpy(rng.integers(0, 2**32, (bits, k // 32, n), dtype=np.uint32)).cuda()
            alphas = torch.rand(n, k // 128, bits, device="cuda").half()
            offsets = torch.zeros(n, k // 128, device="cuda").half()
            x = torch.randn(m, k, device="cuda").half()
            out = torch.empty(m, n, device="cuda").half()
            w16 = torch.randn(n, k, device="cuda").half()
            us = triton.testing.do_bench(lambda: fn(x, planes, alphas, offsets, out), return_mode="median") * 1e3
            fp16 = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, w16), return_mode="median") * 1e3
            print(f"bcq{bits} K={k} N={n} M={m} rows={rows}: {us:.1f} us, fp16 {fp16:.1f} us, x{fp16 / us:.2f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
