"""Low-bit operators written as TensorIR (unscheduled): what each kernel computes."""
from .w4a16 import W4A16Op, w4a16_op

__all__ = ["W4A16Op", "w4a16_op"]
