"""The decoder's residual add fused with the RMSNorm that follows it (``ops.add_rms_norm``).

Each decoder layer adds two residuals (after attention, after the MLP) and normalizes each sum for the next
block; ``add_rms_norm`` does both in one kernel (on CUDA scheduled by ``schedules.add_rms_norm``) and
returns the sum and the normalized sum. The norms' weights stay the parameters of their ``nn.RMSNorm``
modules, so checkpoints and parameter names do not change.
"""
from ..kernel import OPAQUE_PATTERN
from ..ops.add_rms_norm import AddRMSNormOp
from ..schedules.add_rms_norm import AddRMSNorm
from ..tvm_api import IS_SCHEDULED, relax_nn as nn
from .fp_linear import leading_rows

_FUNCTIONS = {}


def _function(op: AddRMSNormOp, target):
    key = (op, str(target))
    if key not in _FUNCTIONS:
        func = op.prim_func()
        if target.kind.name == "cuda":
            func = AddRMSNorm().apply(func, target).mod["main"].with_attr(IS_SCHEDULED, True)
        _FUNCTIONS[key] = func.with_attr("op_pattern", OPAQUE_PATTERN).without_attr("global_symbol")
    return _FUNCTIONS[key]


def add_rms_norm(x: nn.Tensor, residual: nn.Tensor, norm: nn.RMSNorm, target):
    """``(x + residual, norm(x + residual))`` for ``x`` and ``residual`` of shape ``[..., hidden]``."""
    lead, rows = leading_rows(x)
    hidden = x.shape[-1]
    func = _function(AddRMSNormOp(hidden, x.dtype, float(norm.epsilon)), target)
    flat = [nn.op.reshape(t, (rows, hidden)) for t in (x, residual)]
    out = [nn.Tensor.placeholder((rows, hidden), x.dtype) for _ in range(2)]
    total, normed = nn.op.tensor_ir_op(func, "add_rms_norm", args=[*flat, norm.weight], out=out)
    shape = (*lead, hidden)
    return nn.op.reshape(total, shape), nn.op.reshape(normed, shape)
