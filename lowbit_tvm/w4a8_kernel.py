"""Build Atom-style W4A8 / W8A8 / W4A4 linear layers: the quantize kernel and the tensor-core GEMM(s), one module.

A call ``layer(x, *weights, out)`` runs, on the GPU: the fused reorder + per-token quantize kernel (``x`` fp16
``[M, K]`` -> int8 ``[M_pad, main_k + outliers]`` and fp32 scales, in a workspace; W4A4: the main part as packed
int4 ``[M_pad, main_k / 2]`` with a scale per token and group of 128), the main GEMM, and, with outliers, the
outlier GEMM (int8) adding onto ``out``. ``out`` is fp16 ``[M_pad, N]`` (rows padded to the block tile; use
``out[:M]``).
"""
from dataclasses import dataclass

import numpy as np

from .errors import QuantizationError
from .kernel import PASS_CONFIG
from .ops.w4a4 import Int4GemmOp
from .ops.w4a8 import IntGemmOp
from .quant import atom_w4a4
from .quant.atom import AtomScheme, AtomWeight
from .schedules.w4a4_tensor_core import Int4GemmTensorCore
from .schedules.w4a8_dispatch import LinearPlan, check_variant, plan_linear
from .schedules.w4a8_quantize import ActQuant
from .schedules.w4a8_tensor_core import IntGemmTensorCore
from .tvm_api import tvm

#: The schedule rule of each GEMM operator type.
GEMM_RULES = {IntGemmOp: IntGemmTensorCore, Int4GemmOp: Int4GemmTensorCore}


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
        packed = atom_w4a4.packed_weight(aw) if self.plan.variant == "w4a4" else aw.packed()
        args = [aw.perm, packed, np.ascontiguousarray(aw.scales.T)]  # scales group-major for the kernel
        if self.plan.scheme.outliers:
            args += [aw.packed_outliers(), np.ascontiguousarray(aw.outlier_scales.T)]
        return args

    def workspace(self) -> list:
        """``[(shape, dtype)]`` of the quantized activations (main[, outliers]) and their per-token (W4A4's main
        part: per token and group) max |x| (main[, outliers]); allocate once per M."""
        q = self.plan.quant
        main, main_max = q.main_shapes
        if not q.outliers:
            return [(main, "int8"), (main_max, "float32")]
        return [(main, "int8"), ((q.m_pad, q.outliers), "int8"), (main_max, "float32"), ((q.m_pad,), "float32")]

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
        sch = GEMM_RULES[type(op)]().apply(op.prim_func(), target, config=config)
        functions[op.name] = sch.mod["main"].with_attr("global_symbol", op.name)
    return tvm.IRModule(functions)


def build_plan(plan: LinearPlan, target) -> W4A8Linear:
    """Schedule and compile ``plan`` for ``target`` without checking the variant against the target (W4A4 on an
    arch that emulates int4 mma builds too: for tests and measurements)."""
    from .codegen import build_module  # pylint: disable=import-outside-toplevel

    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(schedule_plan(plan, target), target)
    return W4A8Linear(plan, module)


def build(m: int, n: int, k: int, scheme: AtomScheme, target, config=None, variant: str | None = None) -> W4A8Linear:
    """Plan, schedule and compile one layer for ``target`` (compiled device code, see ``lowbit_tvm.codegen``).

    Parameters
    ----------
    m, n, k : int
        Rows, output and input features.
    scheme : AtomScheme
        The weights' format (``AtomScheme(4, 128, o)`` for W4A8 and W4A4, ``W8A8``).
    target : tvm.target.Target
        A CUDA target.
    config : IntGemmConfig or None
        The main GEMM's knobs (default: ``gemm_config``).
    variant : str or None
        ``"w4a8"``, ``"w8a8"`` or ``"w4a4"`` (int4 activations, only on sm_80/86/89); None: W8A8 for int8
        weights, else W4A8.

    Raises
    ------
    CodegenError
        For W4A4 on a target without native int4 tensor cores (e.g. sm_90: use W4A8), or an unknown variant.
    QuantizationError
        If the variant does not fit ``scheme`` or the shapes do not fit the kernels.
    """
    from .codegen import arch_of  # pylint: disable=import-outside-toplevel

    variant = check_variant(variant or ("w8a8" if scheme.weight_bits == 8 else "w4a8"), arch_of(target))
    if (variant == "w8a8") != (scheme.weight_bits == 8):
        raise QuantizationError(f"variant {variant!r} does not fit weights {scheme.name}")
    return build_plan(plan_linear(m, n, k, scheme, config, act_bits=4 if variant == "w4a4" else 8), target)

