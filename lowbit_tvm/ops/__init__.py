"""Low-bit operators written as TensorIR (unscheduled): what each kernel computes."""
from .bcq_lut import BCQLutOp, bcq_lut_op
from .w4a16 import W4A16Op, w4a16_op

__all__ = ["BCQLutOp", "W4A16Op", "bcq_lut_op", "w4a16_op"]
