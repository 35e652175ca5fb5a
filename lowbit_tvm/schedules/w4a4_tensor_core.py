"""W4A4 (Atom) on int4 tensor cores: ``mma.sync.m16n8k64.s4.s4.s32``, int32 per K group rescaled into fp32.

The schedule of ``w4a8_tensor_core`` on bytes that hold two int4 codes (``lowbit_tvm.ops.w4a4``): the packed
activations go through the same ``cp.async`` pipeline and int8 ``ldmatrix`` (a 16x64 int4 tile has the 16x32 int8
tile's register layout), the weight fragments are copied to registers as they are (no unpacking), and each 16x16
output tile takes a 16x16x64 int4 product per 32 bytes of K (two m16n8k64 mma, our ``lowbit_mma_s4s4s32_trans_b``
intrinsic). Per group of 128 channels the int32 tile is added into the fp32 one times the weight scale of the
column and the activation scale of the row (token, group). Native on sm_80/86/89; sm_90 emulates int4 mma.
"""
from dataclasses import dataclass

from . import w4a8_intrinsics as intrin
from .w4a8_tensor_core import IntGemmConfig, IntGemmTensorCore


@dataclass(frozen=True)
class Int4GemmConfig(IntGemmConfig):
    """Knobs as :class:`IntGemmConfig`; ``k_inner`` counts 32-byte (64-code) steps within a group (1 or 2)."""

    k_inner: int = 2


class Int4GemmTensorCore(IntGemmTensorCore):
    """Tensor-core rule for ``lowbit_tvm.ops.w4a4.Int4GemmOp``."""

    name = "int4-gemm-tensor-core"
    Config = Int4GemmConfig
    SPACE = {**IntGemmTensorCore.SPACE, "k_inner": (1, 2)}  # a group of 128 codes is 64 bytes
    REDUCE_AXES = 2
    MMA_INTRIN = intrin.MMA_S4
    RESCALE_INTRINS = (intrin.RESCALE_ROW, intrin.RESCALE_ROW_FAST)

    @staticmethod
    def _fast_convert(sch, loops, bits):
        """Whether a group's int32 sums stay below ``FAST_CONVERT_LIMIT``: codes up to 7 x 8 in magnitude."""
        codes = 64 * int(sch.get(loops["k0"]).extent) * int(sch.get(loops["k1"]).extent)
        return codes * 7 * 8 < intrin.FAST_CONVERT_LIMIT
