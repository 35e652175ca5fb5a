"""Llama-family model configurations and named presets (gpt-fast style)."""
from dataclasses import asdict, dataclass, fields, replace

from ..errors import LowbitError


class ModelConfigError(LowbitError, ValueError):
    """An unknown preset or an inconsistent model configuration."""


@dataclass(frozen=True)
class LlamaConfig:
    """Dimensions of a Llama-family decoder (HF ``LlamaConfig`` field names).

    Parameters
    ----------
    hidden_size, intermediate_size, num_hidden_layers : int
        Model width, MLP width and depth.
    num_attention_heads, num_key_value_heads : int
        Query heads and key/value heads (grouped-query attention when fewer).
    vocab_size : int
        Token vocabulary.
    head_dim : int
        Per-head width (0: ``hidden_size // num_attention_heads``).
    rms_norm_eps, rope_theta : float
        RMSNorm epsilon and the RoPE base.
    tie_word_embeddings : bool
        The LM head reuses the embedding matrix.
    max_position_embeddings : int
        Longest context the model was trained for.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int = 0
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @classmethod
    def from_dict(cls, values: dict) -> "LlamaConfig":
        """A config from a dict with HF names (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def to_json(self) -> dict:
        """A JSON-ready dict (the same names ``from_dict`` reads)."""
        return asdict(self)

    def with_layers(self, num_hidden_layers: int) -> "LlamaConfig":
        """The same model with another depth (for benchmarks of a slice of a big model)."""
        return replace(self, num_hidden_layers=num_hidden_layers)


PRESETS = {
    "smollm2-135m": LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, max_position_embeddings=8192,
    ),
    "llama-2-7b": LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=4096,
    ),
    "llama-3-8b": LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    # A tiny random model for tests and the CPU end-to-end check.
    "tiny": LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=512,
    ),
}


def get_preset(name: str) -> LlamaConfig:
    """The preset config called ``name``.

    Raises
    ------
    ModelConfigError
        If there is no such preset (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
