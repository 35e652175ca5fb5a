"""Build Atom-style W4A8 / W8A8 linear layers: the quantize kernel and the int8 tensor-core GEMM(s), one module.

A call ``layer(x, *weights, out)`` runs, on the GPU: the fused reorder + per-token quantize kernel (``x`` fp16
``[M, K]`` -> int8 ``[M_pad, main_k + outliers]`` and fp32 scales, in a workspace), the main GEMM, and, with
outliers, the outlier GEMM adding onto ``out``. ``out`` is fp16 ``[M_pad, N]`` (rows padded to the block tile;
use ``out[:M]``).
"""
from dataclasses import dataclass

import numpy as np

from .errors import QuantizationError
from .kernel import PASS_CONFIG
from .quant.atom import AtomScheme, AtomWeight
from .schedules.w4a8_dispatch import LinearPlan, plan_linear
from .schedules.w4a8_quantize import ActQuant
from .schedules.w4a8_tensor_core import IntGemmTensorCore
from .tvm_api import tvm


@dataclass
class W4A8Linear:
    """A compiled layer: ``plan`` says which kernels, ``module`` holds them."""

    plan: LinearPlan
    module: object

    @property
    def names(self) -> list:
        """Function names in call order: the quantize kernel, then the GEMM(s)."""
        return [self.plan.quant.name] + [op.name for op, _ in self.plan.gemms]

    def prepare(self, aw: AtomWeight) -> list:
        """Weight arguments ``[perm, packed, scales(, packed_outliers, outlier_scales)]`` (NumPy arrays; scales
        transposed to ``[groups, N]``)."""
        if aw.shape != (self.plan.n, self.plan.k) or aw.scheme != self.plan.scheme:
            raise QuantizationError(
                f"weight is {aw.scheme.name} {aw.shape}, layer wants {self.plan.scheme.name} ({self.plan.n}, {self.plan.k})"
            )
        args = [aw.perm, aw.packed(), np.ascontiguousarray(aw.scales.T)]  # scales group-major for the kernel
        if self.plan.scheme.outliers:
            args += [aw.packed_outliers(), np.ascontiguousarray(aw.outlier_scales.T)]
        return args

    def workspace(self) -> list:
        """``[(shape, dtype)]`` of the quantized activations (main[, outliers]) and their per-token max |x|
        (main[, outliers]); allocate once per M."""
        q = self.plan.quant
        acts = [((q.m_pad, q.main_k), "int8")] + ([((q.m_pad, q.outliers), "int8")] if q.outliers else [])
        return acts + [((q.m_pad,), "float32")] * len(acts)

    def functions(self) -> list:
        """The compiled functions, in call order."""
        return [self.module[name] for name in self.names]

    def launcher(self, x, weights, workspace, out):
        """A no-argument callable running the whole layer (for timing loops); no checks."""
        quant, *gemms = self.functions()
        perm, packed, scales, *outlier = weights
        half = len(workspace) // 2
        acts, maxima = workspace[:half], workspace[half:]

        def run():
            quant(x, perm, *acts, *maxima)
            gemms[0](acts[0], maxima[0], packed, scales, out)
            if outlier:
                gemms[1](acts[1], maxima[1], outlier[0], outlier[1], out, out)

        return run

    def __call__(self, x, weights, workspace, out, check_finite: bool = True):
        """Run on torch CUDA tensors: ``x`` fp16 ``[M, K]``, ``weights`` from ``prepare`` (on the device),
        ``workspace`` as ``workspace()`` says, ``out`` fp16 ``[M_pad, N]``.

        Raises
        ------
        QuantizationError
            With ``check_finite``, if ``x`` holds Inf/NaN (costs one reduction and a sync; the kernels would
            quantize such a row to garbage).
        """
        if tuple(x.shape) != (self.plan.m, self.plan.k) or tuple(out.shape) != (self.plan.m_pad, self.plan.n):
            raise QuantizationError(
                f"x must be [{self.plan.m}, {self.plan.k}] and out [{self.plan.m_pad}, {self.plan.n}], got "
                f"{tuple(x.shape)} and {tuple(out.shape)}"
            )
        if check_finite and not bool(x.isfinite().all()):
            raise QuantizationError("activations hold Inf/NaN: per-token scales would be meaningless")
        self.launcher(x, weights, workspace, out)()


def schedule_plan(plan: LinearPlan, target) -> tvm.IRModule:
    """The scheduled functions of ``plan`` in one IRModule."""
    functions = {}
    sch = ActQuant().apply(plan.quant.prim_func(), target, config=plan.quant_config)
    functions[plan.quant.name] = sch.mod["main"].with_attr("global_symbol", plan.quant.name)
    for op, config in plan.gemms:
        sch = IntGemmTensorCore().apply(op.prim_func(), target, config=config)
        functions[op.name] = sch.mod["main"].with_attr("global_symbol", op.name)
    return tvm.IRModule(functions)


def build(m: int, n: int, k: int, scheme: AtomScheme, target, config=None) -> W4A8Linear:
    """Plan, schedule and compile one layer for ``target`` (compiled device code, see ``lowbit_tvm.codegen``)."""
    from .codegen import build_module  # pylint: disable=import-outside-toplevel

    plan = plan_linear(m, n, k, scheme, config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(schedule_plan(plan, target), target)
    return W4A8Linear(plan, module)

