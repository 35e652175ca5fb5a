"""Paged decode attention (one query token per sequence) as TensorIR, with the split-KV plan and a float64 model.

The function has the argument list and meaning of the ``tir_attention_decode`` kernel that TVM's paged KV
cache runtime (``vm.builtin.paged_attention_kv_cache_create``) calls for single-token steps:

``(q [B, H, D], pages [max_pages, 2, H_kv, page_size, D], page_indptr [B + 1], page_values [nnz_pages],
last_page_len [B], k_rope_pos_offset [B], q_rope_position [B], output [B, H, D], lse [B, H],
rotary_mode, rope_scale, rope_theta, sm_scale)``

Sequence ``b`` owns the pages ``page_values[page_indptr[b]:page_indptr[b + 1]]``, all full except the last,
which holds ``last_page_len[b]`` tokens; token ``t`` of it is ``pages[page_values[page_indptr[b] + t //
page_size], 0 (K) or 1 (V), kv_head, t % page_size, :]``. Query head ``h`` reads kv head ``h // (H / H_kv)``
(grouped-query attention). ``output`` is ``softmax(q k^T * sm_scale) v`` in the activation dtype, ``lse``
its log-sum-exp in base 2 of the scaled scores (``log2(sum_t 2^(s_t))`` with ``s_t = q.k_t * sm_scale *
log2(e)``), which the runtime uses to merge attention states. A sequence with no tokens gets output 0 and
lse ``EMPTY_LSE`` (TVM's value). The arguments ``k_rope_pos_offset``, ``q_rope_position``, ``rope_scale``
and ``rope_theta`` are only read by TVM's kernels in ``RopeMode.INLINE`` (``rotary_mode == 1``); our graphs
apply RoPE before K enters the cache (``RopeMode.NORMAL``), so this function asserts ``rotary_mode == 0``.

Split-KV plan (flash-decoding), shared by this TIR and the CUDA kernel of ``schedules.decode_attention``:
each (sequence, kv head) is cut into ``num_splits(B)`` ranges of whole chunks of ``chunk`` tokens; each range
yields a partial softmax state (output normalized by its own sum, and its lse), computed chunk by chunk with
an online softmax; a merge weights the ranges' outputs by ``2^(lse_s - max lse)``.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..tvm_api import T, tirx

LOG2E = math.log2(math.e)
EMPTY_LSE = -5.0e4  # lse of a sequence with no tokens (and TVM's initial running maximum)


@dataclass(frozen=True)
class SplitPlan:
    """How decode attention cuts sequences into ranges (see the module docstring).

    Parameters
    ----------
    chunk : int
        Tokens processed per online-softmax step (staged in shared memory on the GPU); ranges are whole chunks.
    target_blocks : int
        Thread blocks wanted for the partial kernel: ``batch * kv_heads * splits`` is grown toward it.
    max_splits : int
        The most ranges per (sequence, kv head).
    """

    chunk: int = 32
    target_blocks: int = 1024
    max_splits: int = 32

    def num_splits(self, batch, kv_heads: int):
        """Ranges per (sequence, kv head) for ``batch`` sequences (an int, or a TIR expression of a TIR var)."""
        if isinstance(batch, (int, np.integer)):
            return max(1, min(self.max_splits, -(-self.target_blocks // (int(batch) * kv_heads))))
        return T.max(1, T.min(self.max_splits, ceil_div(self.target_blocks, batch * kv_heads)))

    def range_len(self, seq_len, splits):
        """Tokens per range (a multiple of ``chunk``, at least one chunk) for a sequence of ``seq_len``."""
        if isinstance(seq_len, (int, np.integer)):
            return max(1, -(-(-(-int(seq_len) // splits)) // self.chunk)) * self.chunk
        return T.max(1, ceil_div(ceil_div(seq_len, splits), self.chunk)) * self.chunk


def ceil_div(a, b):
    """``ceil(a / b)`` for ``a >= 0, b > 0`` as TIR (truncated division: no floor fix-ups in the kernel)."""
    return tirx.truncdiv(a + b - 1, b)


@dataclass(frozen=True)
class DecodeAttentionOp:
    """One decode-attention workload (the cache key of its functions).

    Parameters
    ----------
    num_q_heads, num_kv_heads : int
        Query and KV heads (``num_q_heads`` a multiple of ``num_kv_heads``).
    head_dim : int
        Features per head (K and V alike).
    dtype : str
        Dtype of queries, pages and output.
    page_size : int
        Tokens per KV page (TVM's TIR kernels are built for 16).
    """

    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float16"
    page_size: int = 16

    def __post_init__(self):
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_q_heads} query heads are not a multiple of {self.num_kv_heads} kv heads")

    @property
    def group(self) -> int:
        """Query heads per kv head."""
        return self.num_q_heads // self.num_kv_heads

    def kv_bytes(self, batch: int, seq_len: int) -> int:
        """Bytes of K and V one layer's decode step reads for ``batch`` sequences of ``seq_len`` tokens."""
        return 2 * batch * seq_len * self.num_kv_heads * self.head_dim * np.dtype(self.dtype).itemsize

    def prim_func(self, plan: SplitPlan = SplitPlan()) -> tirx.PrimFunc:
        """The unscheduled TensorIR (serial loops, runs on the CPU) of the split-KV algorithm."""
        return _serial_func(self, plan)


def seq_len_expr(page_indptr, last_page_len, b, page_size: int):
    """Tokens of sequence ``b`` (TIR expression over the page table buffers)."""
    pages = page_indptr[b + 1] - page_indptr[b]
    return T.if_then_else(pages > 0, (pages - 1) * page_size + last_page_len[b], 0)


def declare_buffers(op: DecodeAttentionOp, handles):
    """``T.match_buffer`` of the nine tensor arguments (called while a function is parsed)."""
    q_h, pages_h, indptr_h, values_h, length_h, k_rope_h, q_rope_h, out_h, lse_h = handles
    batch, nnz, max_pages = T.int32(), T.int32(), T.int32()
    h, hk, d, ps = op.num_q_heads, op.num_kv_heads, op.head_dim, op.page_size
    return (
        T.match_buffer(q_h, (batch, h, d), op.dtype),
        T.match_buffer(pages_h, (max_pages, 2, hk, ps, d), op.dtype, elem_offset=T.int64()),
        T.match_buffer(indptr_h, (batch + 1,), "int32", elem_offset=T.int32()),
        T.match_buffer(values_h, (nnz,), "int32", elem_offset=T.int32()),
        T.match_buffer(length_h, (batch,), "int32", elem_offset=T.int32()),
        T.match_buffer(k_rope_h, (batch,), "int32", elem_offset=T.int32()),
        T.match_buffer(q_rope_h, (batch,), "int32", elem_offset=T.int32()),
        T.match_buffer(out_h, (batch, h, d), op.dtype),
        T.match_buffer(lse_h, (batch, h), "float32"),
    )


def _serial_func(op: DecodeAttentionOp, plan: SplitPlan):  # pylint: disable=too-many-locals
    H, HK, D, G, P, C = op.num_q_heads, op.num_kv_heads, op.head_dim, op.group, op.page_size, plan.chunk

    # pylint: disable=invalid-name,unused-argument,too-many-arguments,too-many-positional-arguments
    @T.prim_func(s_tir=True)
    def decode_attention(q_h: T.handle, pages_h: T.handle, indptr_h: T.handle, values_h: T.handle,
                         length_h: T.handle, k_rope_h: T.handle, q_rope_h: T.handle, out_h: T.handle,
                         lse_h: T.handle, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32,
                         sm_scale: T.float32):
        Q, pages, indptr, values, last_len, _k_rope, _q_rope, output, lse = declare_buffers(
            op, (q_h, pages_h, indptr_h, values_h, length_h, k_rope_h, q_rope_h, out_h, lse_h))
        B = Q.shape[0]
        assert rotary_mode == 0, "lowbit_tvm decode attention supports RoPE applied before the cache only"
        part_o = T.alloc_buffer((plan.num_splits(B, HK), B, H, D), "float32")
        part_lse = T.alloc_buffer((plan.num_splits(B, HK), B, H), "float32")
        for b, hk, s in T.grid(B, HK, plan.num_splits(B, HK)):
            with T.sblock("partial"):
                T.reads()
                T.writes()
                m = T.sblock_alloc_buffer((G,), "float32")
                l = T.sblock_alloc_buffer((G,), "float32")
                o = T.sblock_alloc_buffer((G, D), "float32")
                p = T.sblock_alloc_buffer((G, C), "float32")
                alpha = T.sblock_alloc_buffer((G,), "float32")
                n: T.let[T.int32] = seq_len_expr(indptr, last_len, b, P)
                per: T.let[T.int32] = plan.range_len(n, plan.num_splits(B, HK))
                count: T.let[T.int32] = T.max(0, T.min(n, s * per + per) - s * per)
                for g, dd in T.grid(G, D):
                    o[g, dd] = T.float32(0)
                for g in range(G):
                    m[g] = T.float32(EMPTY_LSE)
                    l[g] = T.float32(0)
                for c in range(T.ceildiv(count, C)):
                    for g, t in T.grid(G, C):  # scores of the chunk (log2 domain)
                        p[g, t] = T.float32(0)
                        if c * C + t < count:
                            for dd in range(D):
                                pos: T.let[T.int32] = s * per + c * C + t
                                page: T.let[T.int32] = values[indptr[b] + pos // P]
                                p[g, t] += (T.Cast("float32", Q[b, hk * G + g, dd]) * sm_scale * T.float32(LOG2E)
                                            * T.Cast("float32", pages[page, 0, hk, pos % P, dd]))
                    for g in range(G):  # online softmax: new maximum, rescale, probabilities
                        alpha[g] = m[g]
                        for t in range(T.min(C, count - c * C)):
                            m[g] = T.max(m[g], p[g, t])
                        alpha[g] = T.exp2(alpha[g] - m[g])
                        l[g] = l[g] * alpha[g]
                        for t in range(T.min(C, count - c * C)):
                            p[g, t] = T.exp2(p[g, t] - m[g])
                            l[g] = l[g] + p[g, t]
                    for g, dd in T.grid(G, D):
                        o[g, dd] = o[g, dd] * alpha[g]
                        for t in range(T.min(C, count - c * C)):
                            pos: T.let[T.int32] = s * per + c * C + t
                            page: T.let[T.int32] = values[indptr[b] + pos // P]
                            o[g, dd] = o[g, dd] + p[g, t] * T.Cast("float32", pages[page, 1, hk, pos % P, dd])
                for g, dd in T.grid(G, D):
                    part_o[s, b, hk * G + g, dd] = T.if_then_else(l[g] > 0, o[g, dd] / l[g], T.float32(0))
                for g in range(G):
                    part_lse[s, b, hk * G + g] = T.if_then_else(l[g] > 0, m[g] + T.log2(l[g]), T.float32(EMPTY_LSE))
        for b, h in T.grid(B, H):
            with T.sblock("merge"):
                T.reads()
                T.writes()
                top = T.sblock_alloc_buffer((1,), "float32")
                wsum = T.sblock_alloc_buffer((1,), "float32")
                acc = T.sblock_alloc_buffer((D,), "float32")
                n: T.let[T.int32] = seq_len_expr(indptr, last_len, b, P)
                used: T.let[T.int32] = ceil_div(n, plan.range_len(n, plan.num_splits(B, HK)))
                top[0] = T.float32(EMPTY_LSE)
                wsum[0] = T.float32(0)
                for dd in range(D):
                    acc[dd] = T.float32(0)
                for s in range(used):
                    top[0] = T.max(top[0], part_lse[s, b, h])
                for s in range(used):
                    wsum[0] = wsum[0] + T.exp2(part_lse[s, b, h] - top[0])
                    for dd in range(D):
                        acc[dd] = acc[dd] + T.exp2(part_lse[s, b, h] - top[0]) * part_o[s, b, h, dd]
                for dd in range(D):
                    output[b, h, dd] = T.Cast(op.dtype, T.if_then_else(used > 0, acc[dd] / wsum[0], T.float32(0)))
                lse[b, h] = T.if_then_else(used > 0, top[0] + T.log2(wsum[0]), T.float32(EMPTY_LSE))

    return decode_attention


# ---------------------------------------------------------------------------------------------
# NumPy models: float64 softmax attention over the same paged layout, and random page tables.
# ---------------------------------------------------------------------------------------------
def gather_kv(pages: np.ndarray, page_indptr: np.ndarray, page_values: np.ndarray, last_page_len: np.ndarray,
              b: int) -> tuple:
    """K and V ``[tokens, kv_heads, head_dim]`` of sequence ``b`` read through its page table."""
    page_size = pages.shape[3]
    own = page_values[page_indptr[b]:page_indptr[b + 1]]
    if len(own) == 0:
        empty = np.zeros((0, pages.shape[2], pages.shape[4]), pages.dtype)
        return empty, empty
    n = (len(own) - 1) * page_size + int(last_page_len[b])
    k = pages[own, 0].transpose(0, 2, 1, 3).reshape(-1, pages.shape[2], pages.shape[4])[:n]
    v = pages[own, 1].transpose(0, 2, 1, 3).reshape(-1, pages.shape[2], pages.shape[4])[:n]
    return k, v


def reference(q: np.ndarray, pages: np.ndarray, page_indptr: np.ndarray, page_values: np.ndarray,
              last_page_len: np.ndarray, sm_scale: float) -> tuple:
    """float64 ``(output [B, H, D], lse [B, H])`` of decode attention (``lse`` in base 2, see the module)."""
    batch, heads, dim = q.shape
    group = heads // pages.shape[2]
    out = np.zeros((batch, heads, dim))
    lse = np.full((batch, heads), EMPTY_LSE)
    for b in range(batch):
        k, v = (a.astype(np.float64) for a in gather_kv(pages, page_indptr, page_values, last_page_len, b))
        if len(k) == 0:
            continue
        for h in range(heads):
            scores = k[:, h // group] @ q[b, h].astype(np.float64) * sm_scale * LOG2E
            top = scores.max()
            weights = np.exp2(scores - top)
            out[b, h] = weights @ v[:, h // group] / weights.sum()
            lse[b, h] = top + np.log2(weights.sum())
    return out, lse


def random_paged_inputs(op: DecodeAttentionOp, seq_lens, seed: int = 0, spare_pages: int = 3) -> dict:
    """Random queries and pages with shuffled (non-contiguous) page tables for sequences of ``seq_lens``.

    Returns
    -------
    dict
        ``q, pages, page_indptr, page_values, last_page_len, k_rope_pos_offset, q_rope_position`` (NumPy).
    """
    rng = np.random.default_rng(seed)
    ps = op.page_size
    counts = [-(-n // ps) for n in seq_lens]
    total = sum(counts) + spare_pages
    order = rng.permutation(total)[: sum(counts)].astype(np.int32)
    pages = rng.standard_normal((total, 2, op.num_kv_heads, ps, op.head_dim)).astype(op.dtype)
    batch = len(seq_lens)
    return {
        "q": rng.standard_normal((batch, op.num_q_heads, op.head_dim)).astype(op.dtype),
        "pages": pages,
        "page_indptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
        "page_values": order,
        "last_page_len": np.array([n - (c - 1) * ps if c else 0 for n, c in zip(seq_lens, counts)], np.int32),
        "k_rope_pos_offset": np.zeros(batch, np.int32),
        "q_rope_position": np.array(seq_lens, np.int32),
    }
