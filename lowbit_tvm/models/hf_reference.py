"""An independent float reference: Hugging Face ``LlamaForCausalLM`` holding GGUF-loaded weights.

Built from :class:`~lowbit_tvm.models.gguf_weights.GgufLlama` config and
weights only (no hub download). Needs ``transformers`` (the ``test`` extra).
"""

from __future__ import annotations

from ..errors import MissingPackageError, ModelError
from .gguf_weights import GgufLlama


def hf_llama(model: GgufLlama, dtype=None):
    """Build ``transformers.LlamaForCausalLM`` with the weights of ``model`` (see ``hf_llama_from``)."""
    return hf_llama_from(model.config, model.weights, dtype)


def hf_llama_from(config: dict, weights: dict, dtype=None):
    """Build ``transformers.LlamaForCausalLM`` from an HF config dict and HF-named weights.

    Parameters
    ----------
    config : dict
        HF ``LlamaConfig`` fields (e.g. a GGUF model's ``config`` or ``LlamaConfig.to_json()``).
    weights : dict of str to numpy.ndarray
        Float32 HF-layout weights (``lm_head.weight`` may be absent when the embeddings are tied).
    dtype : torch.dtype, optional
        Parameter dtype; default float32.

    Returns
    -------
    transformers.LlamaForCausalLM
        In eval mode, on the CPU; ``lm_head`` shares the embedding when tied.

    Raises
    ------
    MissingPackageError
        If ``transformers`` is not installed.
    ModelError
        If the weights do not match the model built from the config.
    """
    import torch  # pylint: disable=import-outside-toplevel

    transformers = _transformers()
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    state = {name: torch.from_numpy(value) for name, value in weights.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if config["tie_word_embeddings"] else set()
    if set(missing) - allowed or unexpected:
        raise ModelError(
            f"weights do not fit LlamaForCausalLM: missing {sorted(set(missing) - allowed)}, "
            f"unexpected {sorted(unexpected)}"
        )
    if allowed and hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr():
        raise ModelError("tie_word_embeddings is set but lm_head does not share the embedding")
    return hf.to(dtype or torch.float32).eval()


def hf_logits_fn(hf):
    """A ``logits_fn`` for :func:`~lowbit_tvm.models.perplexity.window_perplexity`.

    Parameters
    ----------
    hf : transformers.LlamaForCausalLM
        The model, e.g. from :func:`hf_llama`.

    Returns
    -------
    callable
        ``ids`` (int numpy ``[T]``) -> float32 torch logits ``[T, vocab]``,
        computed without gradients.
    """
    import torch  # pylint: disable=import-outside-toplevel

    def logits_fn(ids):
        with torch.no_grad():
            return hf(torch.as_tensor(ids, dtype=torch.long)[None]).logits[0].float()

    return logits_fn


def _transformers():
    """Import ``transformers`` or raise :class:`MissingPackageError`."""
    try:
        import transformers  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise MissingPackageError(
            "the float reference model needs transformers; install it with: "
            "pip install transformers (or pip install -e '.[test]')"
        ) from exc
    return transformers


def linear_inputs(config: dict, weights: dict, token_ids, layer_kinds: tuple) -> dict:
    """Input activations of linear layers in the float model, from one forward pass over ``token_ids``.

    Parameters
    ----------
    config, weights
        As for ``hf_llama_from``.
    token_ids : sequence of int
        The calibration tokens (one sequence).
    layer_kinds : tuple of str
        Last name components of the layers to capture (e.g. ``("q_proj", "gate_proj", "down_proj")``).

    Returns
    -------
    dict of str to numpy.ndarray
        ``<layer>.weight`` name -> float64 inputs [tokens, in_features].
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel

    model = hf_llama_from(config, weights)
    captured = {}

    def hook(name):
        def keep(module, args):  # returns None: the input is not replaced
            captured[name] = args[0][0].double().numpy()
        return keep

    handles = [m.register_forward_pre_hook(hook(n + ".weight")) for n, m in model.named_modules()
               if n.split(".")[-1] in layer_kinds]
    with torch.no_grad():
        model(torch.as_tensor(np.asarray(token_ids)[None], dtype=torch.long))
    for handle in handles:
        handle.remove()
    return captured


def logits_module(model):
    """``model`` (an HF causal LM) as a torch module ``input_ids -> logits``, the graph an ONNX export records.

    The forward passes an all-ones attention mask (it keeps transformers off its packed-sequence detection) and
    no cache, so the export has one input and one output.
    """
    import torch  # pylint: disable=import-outside-toplevel

    class _Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits

    return _Logits(model)
