"""Schedule rules (one class per kernel pattern, dlight style) and the dispatcher between them."""
from .bcq_lut import BCQLut, BCQLutConfig
from .rule import ScheduleRule
from .w4a16_gemv import GemvConfig, W4A16Gemv
from .w4a16_mma_gemv import MmaGemvConfig, W4A16MmaGemv
from .w4a16_tensor_core import TensorCoreConfig, W4A16TensorCore

__all__ = ["BCQLut", "BCQLutConfig", "GemvConfig", "MmaGemvConfig", "ScheduleRule", "TensorCoreConfig", "W4A16Gemv",
           "W4A16MmaGemv", "W4A16TensorCore"]
