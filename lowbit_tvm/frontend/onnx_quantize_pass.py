"""The Relax pass that puts an imported model's linear layers on our W4A16 kernel.

It finds ``R.matmul(x, w)`` where ``w`` is a weight parameter found by the ONNX pre-pass
(``onnx_linears``), quantizes the weight offline with the scheme (or takes the codes of a pre-quantized weight as
they are), and rewrites the call to ``call_tir`` of the kernel's graph function (``kernel.graph_function``, the
same PrimFunc the Relax Llama calls): ``x`` is flattened to rows, cast to fp16 and zero-padded to whole groups,
and the result is cast back and reshaped. The weight parameter is replaced by the kernel's ``qweight``,
``scales`` (and ``zeros``) parameters. Layers whose names match a keep-float pattern, that the scheme cannot
hold, or that the target's kernel cannot run stay ``R.matmul`` on the float weight (TVM's lowering, dlight on
CUDA); every decision is recorded in ``records``.
"""
from dataclasses import dataclass
from fnmatch import fnmatch

import numpy as np

from ..kernel import graph_function, graph_variant, prepare_weights
from ..ops.w4a16 import W4A16Op
from ..quant import Int4Scheme, QuantizedWeight, quantize
from ..schedules.w4a16_dispatch import ShapeError
from ..tvm_api import relax, tvm

# What the CUDA schedule of the graph function is sized for (rows per call).
M_HINT = 64


@dataclass(frozen=True)
class LayerRecord:
    """What the pass did with one linear layer (JSON-ready via ``vars``)."""

    node: str
    weight: str
    k: int
    n: int
    kernel: str
    note: str


def _matches(linear, patterns) -> str | None:
    for pattern in patterns:
        names = [name for name in (linear.node, linear.source, linear.scope) if name]
        if any(fnmatch(name, pattern) or fnmatch(name, f"*{pattern}*") for name in names):
            return pattern
    return None


class QuantizeLinears:
    """Rewrite the linear layers of an imported Relax module onto our W4A16 kernel.

    Parameters
    ----------
    linears : dict of str to LinearWeight
        The weight parameters found by the pre-pass, by parameter name.
    scheme : Int4Scheme or None
        How float weights are quantized; None leaves them float (pre-quantized weights still map).
    target : tvm.target.Target
        The build target.
    keep_float : tuple of str
        Layer-name patterns (``fnmatch``, also matched as substrings) of float weights to leave unquantized;
        matched against the ONNX node name, the weight's name and the torch module scope the exporter recorded.
    hessians : dict of str to numpy.ndarray, optional
        ``X^T X`` of each layer's inputs on calibration data, by parameter name: those layers are quantized
        with GPTQ instead of round-to-nearest.
    quantized : dict of str to (QuantizedWeight, str), optional
        Weights already quantized by calibration (``onnx_calibrate.calibrate_graph``; K padded to
        ``scheme.padded_k``) and their notes, by parameter name: used as they are.

    Attributes
    ----------
    records : list of LayerRecord
        One per linear layer, after the pass ran.
    arrays : dict of str to list of (str, numpy.ndarray)
        The run-time parameters that replace each weight parameter, by its name.
    """

    def __init__(self, linears: dict, scheme: Int4Scheme | None, target, keep_float=("lm_head",), hessians=None,
                 quantized=None):
        self.linears = linears
        self.scheme = scheme
        self.target = target
        self.keep_float = tuple(keep_float)
        self.hessians = hessians or {}
        self.quantized = quantized or {}
        self.records = []
        self.arrays = {}

    def __call__(self, mod):
        """Apply the pass to ``mod`` (its ``main`` function) and return the new module."""
        rewriter = _Rewriter(mod, self)
        func = mod["main"]
        body = rewriter.visit_expr(func)
        params = []
        for param in body.params:
            params.extend(rewriter.replaced.get(param.name, [param]))
        new_func = relax.Function(params, body.body, body.ret_ty, body.is_pure, body.attrs)
        rewriter.builder_.update_func(rewriter.builder_.get().get_global_var("main"), new_func)
        return rewriter.builder_.get()

    def plan(self, linear) -> tuple:
        """``(W4A16Op, QuantizedWeight, note)`` for a layer that goes on the kernel, else ``(None, None, why)``."""
        pre = linear.prequantized
        op, why = self.kernel_op(linear)
        if op is None:
            return None, None, why
        if pre is not None:
            return op, _pad_k(pre.weight, op.k), "pre-quantized codes kept"
        if linear.param in self.quantized:
            qw, note = self.quantized[linear.param]
            return op, qw, note
        return op, self._quantize(linear, op), "gptq" if linear.param in self.hessians else "round-to-nearest"

    def kernel_op(self, linear) -> tuple:
        """``(W4A16Op, "")`` if the layer goes on the kernel, else ``(None, why it stays float)``."""
        pre = linear.prequantized
        if pre is not None and pre.weight is None:
            return None, f"pre-quantized, dequantized to float ({pre.reason})"
        if pre is None:
            if self.scheme is None:
                return None, "float (no scheme)"
            pattern = _matches(linear, self.keep_float)
            if pattern is not None:
                return None, f"float (kept by pattern {pattern!r})"
        scheme = pre.weight.scheme if pre is not None else self.scheme
        op = W4A16Op(linear.n, scheme.padded_k(pre.weight.shape[1] if pre is not None else linear.k), scheme)
        try:
            graph_variant(op, self.target)
            graph_function(op, self.target, M_HINT)
        except ShapeError as err:
            return None, f"float (the kernel does not fit: {err})"
        return op, ""

    def _quantize(self, linear, op: W4A16Op) -> QuantizedWeight:
        weight = linear.float_weight()
        if op.k != linear.k:
            weight = np.pad(weight, ((0, 0), (0, op.k - linear.k)))
        hessian = self.hessians.get(linear.param)
        if hessian is None:
            return quantize(weight, op.scheme)
        from ..quant.gptq import gptq_quantize  # pylint: disable=import-outside-toplevel

        if op.k != linear.k:
            hessian = np.pad(hessian, ((0, op.k - linear.k), (0, op.k - linear.k)))
            hessian[np.arange(linear.k, op.k), np.arange(linear.k, op.k)] = 1.0
        return gptq_quantize(weight, hessian, op.scheme)


def _pad_k(qw: QuantizedWeight, k: int) -> QuantizedWeight:
    """``qw`` with K zero-padded to ``k`` (whole groups: the padding's activations are zero)."""
    n, k0 = qw.shape
    if k0 == k:
        return qw
    groups = qw.scheme.groups(k) - qw.scheme.groups(k0)
    packed = np.pad(qw.packed, ((0, 0), (0, (k - k0) // 8)))
    scales = np.pad(qw.scales, ((0, 0), (0, groups)))
    zeros = None if qw.zeros is None else np.pad(qw.zeros, ((0, 0), (0, groups)))
    return QuantizedWeight(packed, scales, zeros, qw.scheme, (n, k))


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):  # pylint: disable=abstract-method
    def __init__(self, mod, owner: QuantizeLinears):
        super().__init__(mod)
        self.owner = owner
        self.replaced = {}
        self._matmul = tvm.ir.Op.get("relax.matmul")

    def visit_call_(self, call):
        if call.op.same_as(self._matmul) and isinstance(call.args[1], relax.Var):
            linear = self.owner.linears.get(call.args[1].name)
            if linear is not None:
                return self._rewrite(call, linear)
        return super().visit_call_(call)

    def _rewrite(self, call, linear):
        owner = self.owner
        op, qw, note = owner.plan(linear)
        weight_var = call.args[1]
        if op is None:
            array = linear.float_weight().T.astype(linear.dtype)
            owner.arrays[linear.param] = [(linear.param, np.ascontiguousarray(array))]
            owner.records.append(LayerRecord(linear.node, linear.source, linear.k, linear.n, "float", note))
            return super().visit_call_(call)
        arrays = prepare_weights(graph_variant(op, owner.target), qw)
        names = [f"{linear.param}.{part}" for part in ("qweight", "scales", "zeros")][: len(arrays)]
        new_vars = [relax.Var(name, relax.TensorType(a.shape, str(a.dtype))) for name, a in zip(names, arrays)]
        self.replaced[weight_var.name] = new_vars
        owner.arrays[linear.param] = list(zip(names, arrays))
        owner.records.append(LayerRecord(linear.node, linear.source, linear.k, linear.n, op.scheme.name, note))
        return self._emit_kernel(self.visit_expr(call.args[0]), op, linear, new_vars)

    def _emit_kernel(self, x, op: W4A16Op, linear, weights):
        bb = self.builder_
        lead = list(x.ty.shape.values[:-1])
        rows = 1
        for dim in lead:
            rows = rows * dim
        flat = bb.emit(relax.op.reshape(x, [rows, linear.k]))
        dtype = x.ty.dtype
        if dtype != "float16":
            flat = bb.emit(relax.op.astype(flat, "float16"))
        if op.k != linear.k:
            flat = bb.emit(relax.op.nn.pad(flat, [0, 0, 0, op.k - linear.k]))
        func = graph_function(op, self.owner.target, M_HINT)
        gvar = bb.add_func(func, f"{op.name}_r{M_HINT}")
        out = bb.emit(relax.call_tir(gvar, [flat, *weights], relax.TensorType([rows, op.n], "float16")))
        if dtype != "float16":
            out = bb.emit(relax.op.astype(out, dtype))
        return relax.op.reshape(out, [*lead, op.n])
