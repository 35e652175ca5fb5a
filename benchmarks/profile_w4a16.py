"""Run one W4A16 kernel a few times so Nsight Compute can profile it (device helper).

Usage: python benchmarks/profile_w4a16.py M N K
e.g. ``ncu -k regex:w4a16 --launch-skip 3 --launch-count 1 python benchmarks/profile_w4a16.py 16 57344 8192``.
"""
import sys

import numpy as np
import torch

from lowbit_tvm.kernel import build, default_target
from lowbit_tvm.ops.w4a16 import W4A16Op
from lowbit_tvm.quant import get_scheme, quantize


def main(argv):
    m, n, k = (int(v) for v in argv[:3])
    scheme = get_scheme("w4a16-g128")
    weight = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32)
    qw = quantize(weight, scheme)
    kernel = build(W4A16Op(n, k, scheme, m), default_target(), database=None)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    out = torch.empty(m, n, device="cuda", dtype=torch.float16)
    weights = [torch.from_numpy(a).cuda() for a in kernel.prepare(qw)]
    for _ in range(5):
        kernel(x, *weights, out)
    torch.cuda.synchronize()
    print(kernel.op.name, kernel.rule, kernel.source)


if __name__ == "__main__":
    main(sys.argv[1:])
