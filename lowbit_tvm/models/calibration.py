"""Calibrated int4 quantization of a Llama's decoder, one layer at a time (HF transformers, CPU or GPU).

The calibration windows run through the float model layer by layer. For each decoder layer the second moments
``H = X^T X`` and mean magnitudes ``mean |x|`` of its four linear inputs (the attention norm's output read by
q/k/v, the attention output read by o, the MLP norm's output read by gate/up, and ``silu(gate) * up`` read by
down) are accumulated; then the layer is quantized by ``quantize_layer``:

1. optional AWQ scales (``lowbit_tvm.quant.awq``, searched on the statistics and folded into the norms and
   the ``up`` rows, which divides the affected inputs by the scale: ``H`` becomes ``H / (s s^T)``);
2. optional weight clipping (per row and group, the range ratio that minimises that group's output error);
3. GPTQ (``lowbit_tvm.quant.gptq``; the clipped group scales are kept fixed), or round-to-nearest.

With ``sequential`` the next layer's inputs come from this layer with its quantized weights (GPTQ's
sequential calibration), else from the float layer. With ``true_sequential`` (GPTQ's ``--true-sequential``)
also inside a layer: the inputs of o, gate/up and down are collected again after the layers before them in
the layer are quantized (the AWQ scales are searched first, on the layer's inputs before any of it is
quantized, since the down scale is folded into the rows of ``up``). The layers run on the CPU or on a torch
device (``device="cuda"``: float32 with TF32 off, so the statistics match the CPU's up to summation order).

q/k/v and gate/up read one input each, so they are quantized stacked (GPTQ treats rows independently: the
same codes as one by one) and split back into the HF names. The result is a weights dict whose quantized
linears are ``QuantizedWeight`` (K zero-padded as ``W4A16Linear`` pads it), which
``lowbit_tvm.models.quantize.pack_weights`` lays out as they are.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import QuantizationError
from ..quant import Int4Scheme, QuantizedWeight, dequantize, quantize
from ..quant.awq import clip_grid, scale_layer
from ..quant.gptq import DAMPING, gptq_quantize

# Linear layers reading one input: (input name, HF layer names, the fused graph layer that runs them).
INPUT_GROUPS = (
    ("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.qkv_proj"),
    ("attn_out", ("self_attn.o_proj",), "self_attn.o_proj"),
    ("mlp_in", ("mlp.gate_proj", "mlp.up_proj"), "mlp.gate_up_proj"),
    ("mlp_mid", ("mlp.down_proj",), "mlp.down_proj"),
)
# The HF module whose forward input is each named input.
_HOOKED = {name: parts[0] for name, parts, _ in INPUT_GROUPS}
# Which input each AWQ group's scale divides (the first layer of the group names it).
_AWQ_INPUT = {"self_attn.q_proj": "attn_in", "self_attn.o_proj": "attn_out", "mlp.gate_proj": "mlp_in",
              "mlp.down_proj": "mlp_mid"}
# Windows run through a layer at once.
_BATCH = 8


@dataclass(frozen=True)
class CalibrationRecipe:
    """How the decoder's linear layers are quantized with calibration statistics.

    Parameters
    ----------
    scheme : Int4Scheme
        Group size and symmetry of the result.
    gptq : bool
        GPTQ error compensation (else round-to-nearest on the chosen grid).
    awq : bool
        Fold activation-aware input-channel scales into the weights first.
    clip : bool
        Search a clipping ratio per row and group (the grid GPTQ then keeps fixed).
    act_order : bool
        GPTQ in decreasing ``diag(H)`` order with static groups (scales fixed before reordering).
    damping : float
        GPTQ's Hessian damping, a fraction of the mean diagonal.
    sequential : bool
        Calibrate layer ``l`` on the outputs of the already quantized layers before it.
    true_sequential : bool
        Also inside each layer: collect the inputs of o, gate/up and down after the layers before them are
        quantized (implies ``sequential``).
    awq_o : bool
        With ``awq``: also scale o_proj (tied per key/value head, folded into the rows of v).
    """

    scheme: Int4Scheme
    gptq: bool = True
    awq: bool = False
    clip: bool = False
    act_order: bool = False
    damping: float = DAMPING
    sequential: bool = False
    true_sequential: bool = False
    awq_o: bool = False

    @property
    def propagates_quantized(self) -> bool:
        """Whether the next layer is calibrated on this layer's quantized outputs."""
        return self.sequential or self.true_sequential


@dataclass
class InputStats:
    """Accumulated ``X^T X`` (float64 [K, K]), ``sum |x|`` [K] and token count of one linear input."""

    hessian: np.ndarray
    abs_sum: np.ndarray
    tokens: int = 0

    @property
    def mean_abs(self) -> np.ndarray:
        """Mean magnitude per input channel."""
        return self.abs_sum / max(self.tokens, 1)

    def add(self, x) -> None:
        """Accumulate a batch of inputs (a torch tensor [..., K])."""
        flat = x.reshape(-1, x.shape[-1]).float()
        self.hessian += (flat.T @ flat).double().cpu().numpy()
        self.abs_sum += flat.abs().sum(0).double().cpu().numpy()
        self.tokens += flat.shape[0]


def calibration_windows(ids, windows: int, length: int = 512) -> np.ndarray:
    """``windows`` token windows [windows, length] spread evenly over ``ids`` (fewer if the text is short)."""
    ids = np.asarray(ids, dtype=np.int64)
    count = min(windows, len(ids) // length)
    starts = np.linspace(0, len(ids) - length, count).astype(np.int64)
    return np.stack([ids[s:s + length] for s in starts])


def calibrate(config: dict, weights: dict, windows, recipe: CalibrationRecipe, keep_float=None, progress=None,
              device=None):
    """Quantize a Llama's decoder linears with ``recipe``, calibrated on token ``windows`` [W, T].

    Parameters
    ----------
    config : dict
        HF ``LlamaConfig`` fields.
    weights : dict of str to numpy.ndarray
        HF-named float weights.
    windows : array-like of int
        Calibration token windows [W, T] (never the evaluation text).
    recipe : CalibrationRecipe
        What to do per layer.
    keep_float : callable, optional
        ``keep_float(graph_layer_name) -> bool`` (e.g. ``model.layers.3.mlp.gate_up_proj``): such layers keep
        their float weights.
    progress : callable, optional
        Wraps the iterable of layers (e.g. ``tqdm``).
    device : str, optional
        Torch device the decoder layers run on (default the CPU; see ``torch_device``). The quantizers run in
        NumPy on the CPU either way.

    Returns
    -------
    dict
        A new weights dict: quantized linears as ``QuantizedWeight``, AWQ-scaled norms/rows as float arrays,
        everything else shared with ``weights``.
    """
    out = dict(weights)
    keep = keep_float or (lambda _: False)
    walker = _LayerWalker(config, weights, windows, device)
    heads = (config["num_attention_heads"], config["num_key_value_heads"])
    for layer in (progress or iter)(range(walker.count)):
        restat = None
        if recipe.true_sequential:
            restat = lambda name, layer=layer: walker.statistics(layer, (name,), out)[name]  # noqa: E731
        quantize_layer(out, layer, walker.statistics(layer), recipe, keep, restat=restat, heads=heads)
        walker.advance(layer, out if recipe.propagates_quantized else None)
    return out


def layer_statistics(config: dict, weights: dict, windows, progress=None, sequential=False, current=None, device=None):
    """Yield ``(layer, {input name: InputStats})`` for every decoder layer, running the windows through it.

    With ``sequential``, after each yield the layer's weights are reloaded from ``current`` (the dict the
    caller quantizes in place: ``QuantizedWeight`` entries are dequantized) and the layer is run again, so
    the next layer sees the quantized model's activations. ``device``: as for ``calibrate``.
    """
    walker = _LayerWalker(config, weights, windows, device)
    for layer in (progress or iter)(range(walker.count)):
        yield layer, walker.statistics(layer)
        walker.advance(layer, current if sequential else None)


def torch_device(name=None):
    """The ``torch.device`` called ``name`` (default the CPU); for CUDA, TF32 matmuls are switched off so that
    float32 results match the CPU's."""
    import torch  # pylint: disable=import-outside-toplevel

    device = torch.device(name or "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


class _LayerWalker:
    """The calibration windows' hidden states walking through an HF Llama's decoder layers, one at a time."""

    def __init__(self, config: dict, weights: dict, windows, device=None):
        import torch  # pylint: disable=import-outside-toplevel

        from .hf_reference import hf_llama_from  # pylint: disable=import-outside-toplevel

        device = torch_device(device)
        hf = hf_llama_from(config, weights).to(device)
        ids = torch.as_tensor(np.asarray(windows), dtype=torch.long, device=device)
        self.layers = hf.model.layers
        self.count = len(self.layers)
        with torch.no_grad():
            self.hidden = hf.model.embed_tokens(ids)
        self._run = _layer_runner(hf, ids.shape[1], device)
        self._outputs = None

    def statistics(self, layer: int, names=tuple(_HOOKED), current=None) -> dict:
        """``{input name: InputStats}`` of layer ``layer`` on the current hidden states (its weights first
        reloaded from ``current`` when given); keeps the outputs for ``advance``."""
        module = self.layers[layer]
        if current is not None:
            _load_layer(module, layer, current)
        stats = {}
        handles = [_hook(module, _HOOKED[name], name, stats) for name in names]
        try:
            self._outputs = self._run(module, self.hidden)
        finally:
            for handle in handles:
                handle.remove()
        return stats

    def advance(self, layer: int, current=None) -> None:
        """Move the hidden states past layer ``layer``: the outputs of the last ``statistics`` run, or, with
        ``current``, of the layer reloaded from ``current`` (quantized entries dequantized)."""
        if current is not None:
            _load_layer(self.layers[layer], layer, current)
            self._outputs = self._run(self.layers[layer], self.hidden)
        self.hidden, self._outputs = self._outputs, None


def _layer_runner(hf, length: int, device=None):
    """``run(decoder_layer, hidden [W, T, H]) -> hidden`` in batches of windows (causal, positions 0..T-1)."""
    import torch  # pylint: disable=import-outside-toplevel
    from transformers.masking_utils import create_causal_mask  # pylint: disable=import-outside-toplevel

    positions = torch.arange(length, device=device)[None]

    def run(module, hidden):
        outs = []
        with torch.no_grad():
            for start in range(0, hidden.shape[0], _BATCH):
                chunk = hidden[start:start + _BATCH]
                mask = create_causal_mask(config=hf.config, inputs_embeds=chunk, attention_mask=None,
                                          past_key_values=None, position_ids=positions)
                rope = hf.model.rotary_emb(chunk, position_ids=positions)
                outs.append(module(chunk, attention_mask=mask, position_embeddings=rope, position_ids=positions))
        return torch.cat(outs)

    return run


def _hook(module, hooked: str, name: str, stats: dict):
    """Accumulate the input of ``module.<hooked>`` into ``stats[name]``."""
    target = module.get_submodule(hooked)
    k = target.in_features

    def accumulate(_, args):  # returns None: the input is not replaced
        stats.setdefault(name, InputStats(np.zeros((k, k)), np.zeros(k))).add(args[0])

    return target.register_forward_pre_hook(accumulate)


def _load_layer(module, layer: int, weights: dict) -> None:
    """Copy layer ``layer``'s weights (dequantized where quantized) into the HF decoder layer."""
    import torch  # pylint: disable=import-outside-toplevel

    for name, param in module.named_parameters():
        value = weights[f"model.layers.{layer}.{name}"]
        if isinstance(value, QuantizedWeight):
            value = dequantize(value)[:, : param.shape[1]]
        param.data.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def quantize_layer(weights: dict, layer: int, stats: dict, recipe: CalibrationRecipe, keep_float, restat=None,
                   heads=None) -> list:
    """Quantize decoder layer ``layer`` of ``weights`` in place (see the module docstring).

    Parameters
    ----------
    weights : dict
        HF-named weights, updated in place.
    layer : int
        The decoder layer.
    stats : dict of str to InputStats
        The layer's inputs (``INPUT_GROUPS`` names) before any of it is quantized or scaled.
    recipe : CalibrationRecipe
        What to do.
    keep_float : callable
        ``keep_float(graph_layer_name) -> bool``: such layers keep their float weights.
    restat : callable, optional
        ``restat(input name) -> InputStats`` of the layer as ``weights`` now hold it; with it the inputs of
        every group after the first are collected again once the groups before are quantized (true-sequential).
    heads : (int, int), optional
        ``(attention heads, key/value heads)``; needed for ``recipe.awq_o``.

    Returns
    -------
    list of ScaleChoice
        The AWQ choices (empty without AWQ).
    """
    prefix = f"model.layers.{layer}."
    choices = []
    if recipe.awq:
        choices, stats = _scale(weights, prefix, stats, recipe, heads)
    for index, (name, parts, fused) in enumerate(INPUT_GROUPS):
        if keep_float(prefix + fused):
            continue
        hessian = (restat(name) if restat is not None and index > 0 else stats[name]).hessian
        keys = [f"{prefix}{part}.weight" for part in parts]
        stacked = np.concatenate([np.asarray(weights[key], dtype=np.float64) for key in keys])
        qw = quantize_with_statistics(stacked, hessian, recipe)
        rows = np.cumsum([0] + [weights[key].shape[0] for key in keys])
        for key, start, stop in zip(keys, rows[:-1], rows[1:]):
            weights[key] = row_slice(qw, start, stop)
    return choices


def _scale(weights: dict, prefix: str, stats: dict, recipe: CalibrationRecipe, heads):
    """Fold the layer's AWQ scales into ``weights``; return the choices and the statistics of the scaled inputs
    (``H / (s s^T)``, ``sum|x| / s``)."""
    if recipe.awq_o and heads is None:
        raise QuantizationError("AWQ scales for o_proj need the attention's (heads, key/value heads)")
    groups = {hf[0]: ("hessian", stats[name].hessian, stats[name].mean_abs) for name, hf, _ in INPUT_GROUPS}
    choices = scale_layer(weights, prefix, groups, recipe.scheme, heads=heads if recipe.awq_o else None)
    stats = dict(stats)
    for choice in choices:
        name = _AWQ_INPUT[choice.layers[0][len(prefix):-len(".weight")]]
        s = choice.scale
        stats[name] = InputStats(stats[name].hessian / np.outer(s, s), stats[name].abs_sum / s, stats[name].tokens)
    return choices, stats


def quantize_with_statistics(weight: np.ndarray, hessian: np.ndarray, recipe: CalibrationRecipe) -> QuantizedWeight:
    """Clip search and GPTQ (or RTN) of one weight [N, K] whose inputs have second moments ``hessian``;
    K is zero-padded (``scheme.padded_k``), padded inputs are dead."""
    k = weight.shape[1]
    pad = recipe.scheme.padded_k(k) - k
    w = np.pad(weight, ((0, 0), (0, pad)))
    h = np.pad(hessian, ((0, pad), (0, pad)))
    grid = clip_grid(w, h, recipe.scheme) if recipe.clip else None
    if recipe.gptq:
        return gptq_quantize(w, h, recipe.scheme, recipe.damping, act_order=recipe.act_order, grid=grid)
    return grid if grid is not None else quantize(w, recipe.scheme)


def row_slice(qw: QuantizedWeight, start: int, stop: int) -> QuantizedWeight:
    """Rows ``start:stop`` of a quantized weight (the same codes, scales and zeros)."""
    zeros = None if qw.zeros is None else qw.zeros[start:stop].copy()
    return QuantizedWeight(qw.packed[start:stop].copy(), qw.scales[start:stop].copy(), zeros, qw.scheme,
                           (stop - start, qw.shape[1]))


def dequantized(weights: dict, like: dict) -> dict:
    """Float32 weights with every ``QuantizedWeight`` dequantized and cropped to the shape in ``like``."""
    out = {}
    for name, value in weights.items():
        if isinstance(value, QuantizedWeight):
            value = dequantize(value)[:, : like[name].shape[1]]
        out[name] = value
    return out

