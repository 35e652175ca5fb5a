"""Run a model library from Python with only TVM's runtime (no compiler, no ``import tvm``).

``load("model.so")`` checks the library against this machine (TVM version, GPU arch), reads the weights
file beside it, uploads the parameters once and returns a ``LlamaEngine``: ``generate``, ``perplexity``,
``score`` and batched ``decode`` steps over TVM's paged KV cache.
"""
import json
from pathlib import Path

import numpy as np
import torch

from ..codegen.library import _ensure_runtime, load_library, read_sidecar
from ..errors import LibraryError, ModelError
from .recipe import DECODE_MAX_BATCH, METADATA_KEY, WEIGHTS_SUFFIX, ModelRecipe

_POOLED_ALLOCATOR = 2
_CPU, _CUDA = 1, 2  # DLPack device types
PAGE_SIZE = 16


class _Runtime:
    """The KV-state builtins of TVM's runtime."""

    def __init__(self, tvm_ffi):
        get = tvm_ffi.get_global_func
        self.add_sequence = get("vm.builtin.kv_state_add_sequence")
        self.remove_sequence = get("vm.builtin.kv_state_remove_sequence")
        self.begin_forward = get("vm.builtin.kv_state_begin_forward")
        self.end_forward = get("vm.builtin.kv_state_end_forward")
        self.shape = tvm_ffi.Shape


class LlamaEngine:
    """A loaded model: parameters on the device and the VM functions of the library.

    Attributes
    ----------
    recipe : ModelRecipe
        Config, scheme and dtype the library was built with.
    device : torch.device
        Where parameters and activations live.
    tokenizer : tokenizers.Tokenizer or None
        Stored with the weights when the model was built from a real checkpoint.
    eos_token_id : int or None
        The token that ends ``generate`` (the checkpoint's; None: generation stops at ``max_new_tokens``).
    """

    def __init__(self, module, recipe: ModelRecipe, params: list, device: torch.device, tokenizer=None,
                 eos_token_id: int | None = None):
        self._ffi = _ensure_runtime()
        self._rt = _Runtime(self._ffi)
        self.recipe = recipe
        self.device = device
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self._vm = module["vm_load_executable"]()
        init = [_CUDA, device.index or 0, _POOLED_ALLOCATOR] if device.type == "cuda" else []
        self._vm["vm_initialization"](*init, _CPU, 0, _POOLED_ALLOCATOR)
        # One ffi Array, made once: a Python list would be converted on every call.
        self._params = self._ffi.Array([self._ffi.from_dlpack(p) for p in params])
        self._torch_params = params  # keeps the memory alive
        self._functions = {}

    @property
    def config(self):
        """The model's ``LlamaConfig``."""
        return self.recipe.config

    def new_cache(self, max_batch: int, max_tokens: int):
        """A paged KV cache for up to ``max_batch`` sequences and ``max_tokens`` tokens in all."""
        shape = self._rt.shape
        chunk = max(max_tokens, PAGE_SIZE)
        return self._vm["create_paged_kv_cache"](
            shape([max_batch]), shape([max_tokens + PAGE_SIZE * max_batch]), shape([chunk]), shape([PAGE_SIZE]),
            shape([0]),
        )

    def _ids(self, token_ids, rows: int) -> object:
        ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int32).reshape(rows, -1), device=self.device)
        return self._ffi.from_dlpack(ids.contiguous())

    def _run(self, name: str, cache, seq_ids: list, lengths: list, ids):
        if name == "decode":
            _check_decode_batch(len(seq_ids))
        if name not in self._functions:
            self._functions[name] = self._vm[name]
        self._rt.begin_forward(cache, self._rt.shape(seq_ids), self._rt.shape(lengths))
        logits, _ = self._functions[name](ids, cache, self._params)
        self._rt.end_forward(cache)
        return torch.from_dlpack(logits)

    def logits(self, token_ids) -> torch.Tensor:
        """float32 logits ``[len, vocab]`` of every position of one sequence (a fresh cache), on the device."""
        token_ids = np.asarray(token_ids).reshape(-1)
        cache = self.new_cache(1, len(token_ids))
        self._rt.add_sequence(cache, 0)
        return self._run("score", cache, [0], [len(token_ids)], self._ids(token_ids, 1))[0]

    def score(self, token_ids) -> np.ndarray:
        """``logits`` as a NumPy array."""
        return self.logits(token_ids).cpu().numpy()

    def generate_ids(self, prompt_ids, max_new_tokens: int, stop_ids=()) -> list:
        """Greedy continuation of ``prompt_ids`` (a list of token ids); returns the new ids."""
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        cache = self.new_cache(1, len(prompt_ids) + max_new_tokens)
        self._rt.add_sequence(cache, 0)
        logits = self._run("prefill", cache, [0], [len(prompt_ids)], self._ids(prompt_ids, 1))
        new = []
        for _ in range(max_new_tokens):
            token = int(torch.argmax(logits.reshape(-1)))
            new.append(token)
            if token in stop_ids:
                break
            logits = self._run("decode_one", cache, [0], [1], self._ids([token], 1))
        return new

    def generate(self, prompt: str, max_new_tokens: int = 32) -> str:
        """Greedy generation from a text prompt (needs the tokenizer stored with the weights)."""
        tokenizer = self._require_tokenizer()
        ids = tokenizer.encode(prompt).ids
        stop = () if self.eos_token_id is None else (self.eos_token_id,)
        new = self.generate_ids(ids, max_new_tokens, stop_ids=stop)
        return tokenizer.decode(new)

    def perplexity(self, text_or_ids, window: int = 512, max_windows: int | None = None):
        """Perplexity over non-overlapping windows of ``window`` tokens (see ``models.perplexity``).

        Returns
        -------
        PerplexityResult
        """
        from .perplexity import window_perplexity  # pylint: disable=import-outside-toplevel

        ids = text_or_ids
        if isinstance(text_or_ids, str):
            ids = self._require_tokenizer().encode(text_or_ids).ids
        return window_perplexity(self.score, np.asarray(ids), window, max_windows=max_windows)

    def decode_step_fn(self, batch: int, context: int):
        """A function that runs one batched decode step (for benchmarks): ``batch`` sequences of
        ``context`` prompt tokens are prefilled first; each call appends one token to every sequence."""
        _check_decode_batch(batch)
        cache = self.new_cache(batch, batch * (context + 1024))
        for seq in range(batch):
            self._rt.add_sequence(cache, seq)
            self._run("prefill", cache, [seq], [context], self._ids(np.zeros(context), 1))
        ids = self._ids(np.zeros(batch), batch)
        seq_ids, ones = list(range(batch)), [1] * batch

        name = "decode_one" if batch == 1 else "decode"

        def step():
            return self._run(name, cache, seq_ids, ones, ids)

        return step

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise LibraryError("this model was saved without a tokenizer; pass token ids instead of text")
        return self.tokenizer


def _check_decode_batch(rows: int) -> None:
    if rows > DECODE_MAX_BATCH:
        raise ModelError(f"a decode step takes at most {DECODE_MAX_BATCH} sequences, got {rows}; split the batch")


def load(path, device: str | None = None) -> LlamaEngine:
    """Load a model library written by ``lowbit_tvm.models.builder.save_model``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.so`` file; its ``.safetensors`` weights must lie beside it.
    device : str or None
        ``"cuda"`` or ``"cpu"``; default: what the library was built for.

    Raises
    ------
    LibraryError
        If the library or its weights file is missing or not ours.
    LibraryMismatchError
        If the library was built for another GPU arch or TVM version.
    """
    path = Path(path).expanduser().absolute()
    weights_path = path.with_suffix(WEIGHTS_SUFFIX)
    module = load_library(path)
    if not weights_path.is_file():
        raise LibraryError(f"the weights file {weights_path} of {path} is missing")
    meta = read_sidecar(path) or {}
    device = torch.device(device or ("cuda" if meta.get("target_kind") == "cuda" else "cpu"))
    recipe, record, tokenizer_json = _read_metadata(weights_path)
    params = _read_params(weights_path, record["params"], device)
    return LlamaEngine(module, recipe, params, device, _tokenizer(tokenizer_json), record.get("eos_token_id"))


def _read_metadata(weights_path: Path):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as err:
        raise LibraryError(f"{weights_path} is not a readable safetensors file: {err}") from None
    if METADATA_KEY not in meta:
        raise LibraryError(f"{weights_path} was not written by lowbit_tvm (no '{METADATA_KEY}' metadata)")
    record = json.loads(meta[METADATA_KEY])
    return ModelRecipe.from_json(record["recipe"]), record, meta.get("tokenizer")


def _read_params(weights_path: Path, names: list, device: torch.device) -> list:
    from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

    tensors = load_file(str(weights_path))
    missing = [name for name in names if name not in tensors]
    if missing:
        raise LibraryError(f"{weights_path} lacks {len(missing)} parameters, e.g. {missing[:3]}")
    # Fresh allocations: TVM's kernels assume 64-byte aligned buffers, which tensors viewing the
    # file's memory are not.
    return [_aligned_copy(tensors[name], device) for name in names]


def _aligned_copy(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
    out.copy_(tensor)
    return out


def _tokenizer(tokenizer_json: str | None):
    if tokenizer_json is None:
        return None
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

    return Tokenizer.from_str(tokenizer_json)
