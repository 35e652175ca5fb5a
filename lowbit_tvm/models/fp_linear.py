"""Floating-point linear layers whose matmul is scheduled for the rows it will see.

``y = x @ W^T`` is one TensorIR function (fp32 accumulation, result in x's dtype) per (shape, dtype,
rows hint). On CUDA it is scheduled here with dlight: ``GEMV`` on a static single row (``rows_hint`` 1:
single-token decode), ``LowBatchGEMV`` for batched decode steps (``rows_hint`` <= 16) and ``Matmul`` for
prefill; a shared function would get one schedule for all.
"""
from ..kernel import OPAQUE_PATTERN
from ..tvm_api import IS_SCHEDULED, dlight, relax_nn as nn, te, tirx, tvm
from .rows_hint import current_rows_hint

_FUNCTIONS = {}


def _matmul_nt(k: int, n: int, dtype: str, rows: int):
    m = 1 if rows == 1 else tirx.Var("m", "int32")
    x = te.placeholder((m, k), dtype, name="x")
    w = te.placeholder((n, k), dtype, name="w")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute(
        (m, n), lambda i, j: te.sum(x[i, r].astype("float32") * w[j, r].astype("float32"), axis=r), name="matmul"
    )
    out = te.compute((m, n), lambda i, j: acc[i, j].astype(dtype), name="cast")
    return te.create_prim_func([x, w, out])


def schedule_for_rows(func, target, rows: int):
    """``func`` (a matmul, possibly with a decode prologue) scheduled by dlight for about ``rows`` rows."""
    if rows == 1:
        rules = [dlight.gpu.GEMV()]
    elif rows <= 16:
        rules = [dlight.gpu.LowBatchGEMV(), dlight.gpu.Matmul()]
    else:
        rules = [dlight.gpu.Matmul()]
    mod = tvm.IRModule({"main": func})
    with target:
        mod = dlight.ApplyDefaultSchedule(*rules, dlight.gpu.Fallback())(mod)
    return mod["main"].with_attr(IS_SCHEDULED, True)


def matmul_nt_function(k: int, n: int, dtype: str, target, rows: int):
    """The (cached) PrimFunc ``(x [m, k], w [n, k]) -> x @ w^T [m, n]`` for ``target`` (``m`` is 1 when
    ``rows`` is 1, else dynamic)."""
    key = (k, n, dtype, str(target), rows)
    if key not in _FUNCTIONS:
        func = _matmul_nt(k, n, dtype, rows)
        if target.kind.name == "cuda":
            func = schedule_for_rows(func, target, rows)
        _FUNCTIONS[key] = func.with_attr("op_pattern", OPAQUE_PATTERN).without_attr("global_symbol")
    return _FUNCTIONS[key]


def leading_rows(x: nn.Tensor):
    """``(leading dims, their product)`` of ``x`` [..., features]: the rows a linear layer sees."""
    lead = x.shape[:-1]
    rows = 1
    for dim in lead:
        rows = rows * dim
    return lead, rows


def fp16_rows(x: nn.Tensor, k: int):
    """``(leading dims, rows, x as fp16 [rows, k])``: a low-bit layer's input, zero-padded from its last dim to
    ``k`` (whole groups; the padding multiplies zero weights)."""
    lead, rows = leading_rows(x)
    features = int(x.shape[-1])
    flat = nn.op.reshape(x, (rows, features))
    if flat.dtype != "float16":
        flat = flat.astype("float16")
    if k != features:
        flat = nn.op.pad(flat, [0, 0, 0, k - features])
    return lead, rows, flat


def restore_rows(out: nn.Tensor, x: nn.Tensor, lead) -> nn.Tensor:
    """A low-bit layer's fp16 output ``[rows, n]`` back to ``x``'s leading dims and dtype."""
    if x.dtype != "float16":
        out = out.astype(x.dtype)
    return nn.op.reshape(out, (*lead, int(out.shape[-1])))


def linear_nt(x: nn.Tensor, weight: nn.Tensor, target) -> nn.Tensor:
    """``x [..., k] @ weight[n, k]^T`` through ``matmul_nt_function`` (the result has x's dtype)."""
    lead, rows = leading_rows(x)
    k, n = x.shape[-1], weight.shape[0]
    hint = current_rows_hint()
    func = matmul_nt_function(int(k), int(n), x.dtype, target, hint)
    out = nn.op.tensor_ir_op(
        func,
        f"matmul_nt_k{k}_n{n}_r{hint}",
        args=[nn.op.reshape(x, (rows, k)), weight],
        out=nn.Tensor.placeholder((rows, n), x.dtype),
    )
    return nn.op.reshape(out, (*lead, n))


class FpLinear(nn.Module):
    """A bias-free linear layer in the model's dtype (what ``quantize`` replaces with low-bit layers).

    Parameters
    ----------
    in_features, out_features : int
        K and N.
    target : tvm.target.Target
        The build target (the matmul is scheduled for it).
    """

    def __init__(self, in_features: int, out_features: int, target):
        self.in_features, self.out_features = in_features, out_features
        self.target = target
        self.weight = nn.Parameter((out_features, in_features))

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        """``x @ weight^T``."""
        return linear_nt(x, self.weight, self.target)
