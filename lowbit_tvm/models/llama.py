"""A Llama-family decoder written with TVM Relax (``tvm.relax.frontend.nn``).

Embeddings, RMSNorm, grouped-query attention through TVM's paged KV cache (RoPE applied by the cache's
TIR kernels), SwiGLU MLP, tied or separate LM head. Parameter names follow HF transformers
(``model.layers.0.self_attn.o_proj.weight``), except that the q/k/v and the gate/up projections are fused into
one linear layer each (``self_attn.qkv_proj``, ``mlp.gate_up_proj``: one kernel instead of three or two, and
no concatenation before the attention), whose weights are the HF tensors stacked (``FUSED_LINEARS``). Linear layers are
``FpLinear`` (matmuls scheduled for decode or prefill rows) until ``lowbit_tvm.models.quantize`` swaps them
for our low-bit kernels.

On CUDA the cache's single-token attention kernel is ours (``with_our_decode_attention``: split over the
sequence, ``schedules.decode_attention``); prefill attention and the CPU kernels are TVM's.

Exported functions (see ``spec``): ``create_paged_kv_cache``, ``prefill`` (logits of the last token),
``score`` (logits of every token, for perplexity), ``decode`` (one token for each of a batch of
sequences) and ``decode_one`` (one token of one sequence: static shapes, GEMV kernels). On CUDA both decode
functions run as CUDA graphs between the attention calls (see ``builder.build``).
"""
from ..errors import CodegenError
from ..ops.decode_attention import DecodeAttentionOp
from ..schedules.decode_attention import decode_attention_cuda, supports as decode_attention_supported
from ..tvm_api import TVM_VERSION, kv_cache, relax as rx, relax_nn as nn, te
from .config import LlamaConfig
from .fp_linear import FpLinear, linear_nt
from .recipe import DECODE_MAX_BATCH
from .residual_norm import add_rms_norm
from .rows_hint import rows_hint

Tensor, op = nn.Tensor, nn.op
PagedKVCache, RopeMode, TIRPagedKVCache = kv_cache.PagedKVCache, kv_cache.RopeMode, kv_cache.TIRPagedKVCache

# Fused linear layer -> the HF layers whose weights it stacks along the output features, in order.
FUSED_LINEARS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


class LlamaAttention(nn.Module):
    """Grouped-query self-attention over the paged KV cache."""

    def __init__(self, config: LlamaConfig, target):
        self.head_dim = config.head_dim
        self.num_q_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        hidden, d = config.hidden_size, config.head_dim
        self.qkv_proj = FpLinear(hidden, (self.num_q_heads + 2 * self.num_kv_heads) * d, target)
        self.o_proj = FpLinear(self.num_q_heads * d, hidden, target)

    def forward(self, x: Tensor, cache: PagedKVCache, layer_id: int) -> Tensor:
        """Attention output for ``x`` [batch, seq, hidden]; appends this step's K/V to ``cache``."""
        b, s, _ = x.shape
        d = self.head_dim
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.num_q_heads + 2 * self.num_kv_heads, d))
        out = cache.attention_with_fused_qkv(layer_id, qkv, self.num_q_heads, sm_scale=d**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.num_q_heads * d)))


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig, target):
        self.gate_up_proj = FpLinear(config.hidden_size, 2 * config.intermediate_size, target)
        self.down_proj = FpLinear(config.intermediate_size, config.hidden_size, target)

    def forward(self, x: Tensor) -> Tensor:
        """The MLP output for ``x``."""
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks with residual connections."""

    def __init__(self, config: LlamaConfig, target):
        eps = config.rms_norm_eps
        self.target = target
        self.self_attn = LlamaAttention(config, target)
        self.mlp = LlamaMLP(config, target)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, -1, eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, -1, eps, bias=False)

    def forward(self, x: Tensor, normed: Tensor, cache: PagedKVCache, layer_id: int, next_norm: nn.RMSNorm):
        """The layer's output for ``x`` and ``normed`` (``input_layernorm(x)``), and ``next_norm`` of it.

        Each residual add is fused with the norm that reads its sum (``residual_norm.add_rms_norm``).
        """
        x, normed = add_rms_norm(self.self_attn(normed, cache, layer_id), x, self.post_attention_layernorm,
                                 self.target)
        return add_rms_norm(self.mlp(normed), x, next_norm, self.target)


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm."""

    def __init__(self, config: LlamaConfig, target):
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, target) for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, -1, config.rms_norm_eps, bias=False)

    def forward(self, input_ids: Tensor, cache: PagedKVCache) -> Tensor:
        """Final hidden states for ``input_ids`` [batch, seq]."""
        x = self.embed_tokens(input_ids)
        normed = self.layers[0].input_layernorm(x)
        norms_after = [layer.input_layernorm for layer in self.layers[1:]] + [self.norm]
        for layer_id, (layer, next_norm) in enumerate(zip(self.layers, norms_after)):
            x, normed = layer(x, normed, cache, layer_id, next_norm)
        return normed


def _last_token(hidden: te.Tensor) -> te.Tensor:
    b, s, d = hidden.shape
    return te.compute((b, 1, d), lambda i, _, j: hidden[i, s - 1, j], name="last_token")


class LlamaForCausalLM(nn.Module):
    """The causal language model with the exported entry points.

    Parameters
    ----------
    config : LlamaConfig
        Model dimensions.
    target : tvm.target.Target
        What the graph is built for (the KV cache's attention kernels depend on it).
    """

    def __init__(self, config: LlamaConfig, target):
        self.config = config
        self.target = target
        self.model = LlamaModel(config, target)
        if not config.tie_word_embeddings:
            self.lm_head = FpLinear(config.hidden_size, config.vocab_size, target)
        self.dtype = "float32"

    def to(self, dtype: str | None = None) -> None:
        """Set the dtype of activations, norms and unquantized weights."""
        super().to(dtype=dtype)
        if dtype is not None:
            self.dtype = dtype

    def _logits(self, hidden: Tensor) -> Tensor:
        if self.config.tie_word_embeddings:
            logits = linear_nt(hidden, self.model.embed_tokens.weight, self.target)
        else:
            logits = self.lm_head(hidden)
        return logits if logits.dtype == "float32" else logits.astype("float32")

    def prefill(self, input_ids: Tensor, cache: PagedKVCache):
        """Run a prompt ``[1, seq]`` through the model; float32 logits of its last token ``[1, 1, vocab]``."""
        hidden = self.model(input_ids, cache)
        hidden = op.tensor_expr_op(_last_token, name_hint="last_token", args=[hidden])
        return self._logits(hidden), cache

    def score(self, input_ids: Tensor, cache: PagedKVCache):
        """Like ``prefill`` but float32 logits of every token ``[1, seq, vocab]`` (perplexity)."""
        return self._logits(self.model(input_ids, cache)), cache

    def decode(self, input_ids: Tensor, cache: PagedKVCache):
        """One new token per sequence ``[batch, 1]``; float32 logits ``[batch, 1, vocab]``."""
        with rows_hint(16):
            return self._logits(self.model(input_ids, cache)), cache

    def decode_one(self, input_ids: Tensor, cache: PagedKVCache):
        """``decode`` for a single sequence ``[1, 1]``: static shapes, so linear layers run as GEMVs."""
        with rows_hint(1):
            return self._logits(self.model(input_ids, cache)), cache

    def create_paged_kv_cache(  # pylint: disable=too-many-arguments
        self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window
    ) -> PagedKVCache:
        """A paged KV cache object sized at run time (TVM's TIR attention kernels for the target)."""
        cfg = self.config
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, cfg.num_hidden_layers]),
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            qk_head_dim=cfg.head_dim,
            v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_scale=1,
            rope_theta=cfg.rope_theta,
            rope_scaling={},
            rope_ext_factors=rx.prim_value(0),
            rotary_dim=cfg.head_dim,
            enable_disaggregation=False,
            dtype=self.dtype,
            target=self.target,
        )

    def spec(self) -> nn.spec.ModuleSpec:
        """The export spec: argument shapes of every entry point; parameters passed as one tuple."""
        graph = {"param_mode": "packed", "effect_mode": "none"}
        cache = nn.spec.Object(object_type=PagedKVCache)
        return {
            "prefill": {"input_ids": nn.spec.Tensor([1, "seq_len"], "int32"), "cache": cache, "$": graph},
            "score": {"input_ids": nn.spec.Tensor([1, "seq_len"], "int32"), "cache": cache, "$": graph},
            "decode": {"input_ids": nn.spec.Tensor(["batch_size", 1], "int32"), "cache": cache, "$": graph},
            "decode_one": {"input_ids": nn.spec.Tensor([1, 1], "int32"), "cache": cache, "$": graph},
            "create_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }


def export(model: LlamaForCausalLM):
    """The Relax IRModule of ``model`` and its parameter names in argument order.

    Returns
    -------
    (tvm.IRModule, list of str)
    """
    mod, named_params, _ = model.export_tvm(spec=model.spec(), allow_extern=True)
    mod["decode"] = _static_decode(mod["decode"])
    mod = with_our_decode_attention(mod, model.config, model.target, model.dtype)
    return mod, [name for name, _ in named_params]


# The KV cache's single-token attention kernel: ``TIRPagedKVCache`` adds TVM's under this global symbol
# (``_attention_decode`` in ``tvm.relax.frontend.nn.llm._decode_kernels``), which names its GlobalVar.
DECODE_ATTENTION = "batch_decode_paged_kv"


def with_our_decode_attention(mod, config: LlamaConfig, target, dtype: str):
    """``mod`` with the paged cache's decode attention replaced by ours (``schedules.decode_attention``).

    Only on CUDA and for shapes our kernel handles; elsewhere (CPU, fp32) TVM's kernel stays. Ours splits
    each sequence over several thread blocks (TVM's runs one block per kv head: 32 blocks at batch 1 for
    Llama-2-7B). The cache object refers to the function by its GlobalVar, so replacing the function under
    it is enough; the sliding-window variant is not used by our graphs and stays TVM's.

    Raises
    ------
    CodegenError
        If ``mod`` has no function of that name (TVM renamed its kernel).
    """
    op = DecodeAttentionOp(config.num_attention_heads, config.num_key_value_heads, config.head_dim, dtype)
    if target.kind.name != "cuda" or not decode_attention_supported(op):
        return mod
    names = [gvar.name_hint for gvar in mod.get_global_vars()]
    if DECODE_ATTENTION not in names:
        raise CodegenError(f"the KV cache has no decode attention function {DECODE_ATTENTION!r} to replace "
                           f"(TVM {TVM_VERSION}); functions: {', '.join(sorted(names))}")
    gvar = mod.get_global_var(DECODE_ATTENTION)
    mod[gvar] = decode_attention_cuda(op).with_attr("global_symbol", DECODE_ATTENTION)
    return mod


def _static_decode(func: rx.Function) -> rx.Function:
    """``decode`` with its memory planned for ``DECODE_MAX_BATCH`` rows and its kernel runs between the
    attention calls capturable as CUDA graphs keyed by the batch size (with ``relax.backend.use_cuda_graph``)."""
    func = func.with_attr("tir_var_upper_bound", {"batch_size": DECODE_MAX_BATCH})
    return func.with_attr("relax.rewrite_cuda_graph.capture_symbolic_vars", ["batch_size"])
