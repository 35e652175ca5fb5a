"""Residual add fused with RMSNorm: ``s = x + r`` and ``y = rms_norm(s) * w`` in one operator.

Arguments ``x [n, H], r [n, H], w [H] -> s [n, H], y [n, H]`` (``n`` dynamic). The sum is rounded to the
activation dtype first, then normalized in float32 as TVM's ``rms_norm`` does (``s * rsqrt(mean(s^2) + eps)
* w``, cast back), so the result equals the unfused ``add`` followed by ``nn.RMSNorm``. Blocks:
``sum_squares`` (the per-row reduction, recomputed from ``x`` and ``r``) and ``normed`` (writes both
outputs).
"""
from dataclasses import dataclass

from ..tvm_api import te, tirx


@dataclass(frozen=True)
class AddRMSNormOp:
    """One fused add + RMSNorm workload (the cache key of its PrimFunc).

    Parameters
    ----------
    hidden : int
        Features per row.
    dtype : str
        Activation and weight dtype.
    eps : float
        The norm's epsilon.
    """

    hidden: int
    dtype: str
    eps: float

    def prim_func(self) -> tirx.PrimFunc:
        """The unscheduled TensorIR of the operator."""
        hidden, dtype = self.hidden, self.dtype
        n = tirx.Var("n", "int64")
        x = te.placeholder((n, hidden), dtype, name="x")
        r = te.placeholder((n, hidden), dtype, name="r")
        w = te.placeholder((hidden,), dtype, name="w")
        k = te.reduce_axis((0, hidden), name="k")

        def total(i, j):
            return (x[i, j] + r[i, j]).astype("float32")

        squares = te.compute((n,), lambda i: te.sum(total(i, k) * total(i, k), axis=k), name="sum_squares")
        scale = lambda i: tirx.rsqrt(squares[i] / float(hidden) + tirx.const(self.eps, "float32"))  # noqa: E731
        out_sum, out_norm = te.compute(
            (n, hidden),
            lambda i, j: (x[i, j] + r[i, j], (total(i, j) * scale(i) * w[j].astype("float32")).astype(dtype)),
            name="normed",
        )
        return te.create_prim_func([x, r, w, out_sum, out_norm])
