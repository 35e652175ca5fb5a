"""What a model library is: config, weight scheme and dtype (the build key and the stored JSON record)."""
from dataclasses import dataclass

from .config import LlamaConfig

# Layers kept in floating point unless asked otherwise (the LM head is the most sensitive).
DEFAULT_SKIP = ("lm_head",)

# The largest decode batch a library serves: its decode step's memory is planned for this many rows, so
# that on CUDA the step runs as captured CUDA graphs (one per batch size) instead of one launch per kernel.
DECODE_MAX_BATCH = 128

WEIGHTS_SUFFIX = ".safetensors"
METADATA_KEY = "lowbit_tvm"


@dataclass(frozen=True)
class ModelRecipe:
    """What a model library is: the key of a build and the JSON record stored with its weights.

    Parameters
    ----------
    config : LlamaConfig
        Model dimensions.
    scheme : str
        ``"fp16"``/``"fp32"`` for an unquantized graph, else a weight scheme name (``"w4a16-g128"``).
    dtype : str
        Activation dtype (``"float16"`` on CUDA, ``"float32"`` or ``"float16"`` on the CPU).
    skip : tuple of str
        Layer-name patterns kept in floating point.
    """

    config: LlamaConfig
    scheme: str = "fp16"
    dtype: str = "float16"
    skip: tuple = DEFAULT_SKIP

    @property
    def quantized(self) -> bool:
        """Whether the graph calls low-bit kernels."""
        return self.scheme not in ("fp16", "fp32")

    def to_json(self) -> dict:
        """A JSON-ready record (read back by ``from_json``)."""
        return {"config": self.config.to_json(), "scheme": self.scheme, "dtype": self.dtype, "skip": list(self.skip)}

    @classmethod
    def from_json(cls, record: dict) -> "ModelRecipe":
        """The recipe of a ``to_json`` record."""
        return cls(LlamaConfig.from_dict(record["config"]), record["scheme"], record["dtype"], tuple(record["skip"]))
