"""CUDA kernels of paged decode attention (``ops.decode_attention``): split-KV partials, then a merge.

Why split: at batch 1 with Llama-2-7B dims one thread block per (sequence, kv head) is 32 blocks on the
H100's 132 SMs, each walking its whole sequence; a decode step reads little (2 MiB of K/V per layer at 128
tokens), so the time is latency, not bandwidth. Here each (sequence, kv head) is cut into ranges
(``SplitPlan``: up to ``max_splits``, grown until the grid has about ``target_blocks`` blocks) and every
range is a block, so the loads of all ranges are in flight at once.

Partial kernel, grid ``(B * H_kv, splits)``, ``threads`` threads; the block serves every query head of its kv
head (GQA: K/V are read once). For each chunk of ``chunk`` tokens of its range:

1. all threads copy the chunk's K and V rows from their pages to shared memory (16-byte loads, unrolled so
   that all are in flight at once; consecutive threads on consecutive columns of a row; rows padded by 8
   elements against bank conflicts). A page tensor whose element offset is not a multiple of 8 takes a copy
   of 2-byte loads instead (the runtime allocates each layer's pages as a tensor of its own, offset 0);
2. one warp per query head, one lane per token (``chunk`` is 32): the lane computes its score ``q.k *
   sm_scale * log2(e)`` from shared memory, then warp shuffles give the chunk's maximum and sum, which
   update the head's running maximum and sum (online softmax; every lane holds the state), and the lane
   stores its probability;
3. threads own 4 features of one query head each (and a token stripe when there are spare threads) and
   accumulate ``p * v`` in registers, rescaled by the change of the running maximum.

At the end the token stripes are summed through shared memory. With one range per sequence (``splits ==
1``, large batches) the block writes the final output and lse; otherwise it writes its range's normalized
output and lse to a float32 workspace, and the merge kernel (grid ``B * H``, one thread per feature, run only
when ``splits > 1``) combines the ranges a sequence's length uses.
"""
from dataclasses import dataclass

from ..ops.decode_attention import (EMPTY_LSE, LOG2E, DecodeAttentionOp, SplitPlan, ceil_div, declare_buffers,
                                    seq_len_expr)
from ..tvm_api import IS_SCHEDULED, T, tirx

WARP = 32
WARP_STEPS = 5  # shuffle steps of a 32-lane reduction
FULL_MASK = tirx.const(0xFFFFFFFF, "uint32")  # all lanes: the shuffles run where the whole warp is converged
LOAD_VEC = 8  # fp16 elements per shared-memory read of the score step (16 bytes)
COPY_VEC = 8  # elements per global load (16 bytes)
ACC_VEC = 4  # features per thread in the P.V step
PAD = 8  # elements added to each shared-memory row


@dataclass(frozen=True)
class DecodeAttentionConfig:
    """Knobs of the CUDA kernels.

    Parameters
    ----------
    threads : int
        Threads per block of the partial kernel.
    plan : SplitPlan
        Chunk size and how many ranges each sequence is cut into.
    """

    threads: int = 128
    plan: SplitPlan = SplitPlan()


def _layout(op: DecodeAttentionOp, config: DecodeAttentionConfig) -> dict:
    """Derived sizes of the partial kernel (raises ValueError for shapes it does not handle)."""
    nt, c, d, g = config.threads, config.plan.chunk, op.head_dim, op.group
    if c != WARP or nt % WARP:
        raise ValueError(f"the CUDA kernel needs chunk == {WARP} (one lane per token) and whole warps, got {c}, {nt}")
    if d % LOAD_VEC or d > 1024:
        raise ValueError(f"head_dim {d} must be a multiple of {LOAD_VEC} and at most 1024")
    items = g * (d // ACC_VEC)  # (query head, feature group) pairs of the P.V step
    stripes = 1  # token stripes when threads are left over: a power of two, so it divides the chunk
    while stripes * 2 * items <= nt and stripes * 2 <= c:
        stripes *= 2
    return {
        "loads": -(-2 * c * d // COPY_VEC // nt),
        "scores": -(-g * c // nt),
        "rounds": -(-items // nt),
        "items": items,
        "stripes": stripes,
        "qload": -(-g * d // nt),
        "finals": -(-g * d // nt),
    }


def decode_attention_cuda(op: DecodeAttentionOp, config: DecodeAttentionConfig = DecodeAttentionConfig()
                          ) -> tirx.PrimFunc:
    """The scheduled CUDA PrimFunc of ``op`` (signature of ``ops.decode_attention``)."""
    lay = _layout(op, config)
    plan = config.plan
    H, HK, D, G, P, C, NT = (op.num_q_heads, op.num_kv_heads, op.head_dim, op.group, op.page_size, plan.chunk,
                             config.threads)
    CCOLS = D // COPY_VEC  # global loads per K or V row
    SROUNDS = lay["scores"]
    DP, VCOLS, ITEMS, STRIPES, ROUNDS = D + PAD, D // LOAD_VEC, lay["items"], lay["stripes"], lay["rounds"]
    FG = D // ACC_VEC  # feature groups per head
    dtype = op.dtype

    # pylint: disable=invalid-name,unused-argument,too-many-arguments,too-many-positional-arguments
    # pylint: disable=too-many-locals,too-many-statements,too-many-branches
    @T.macro
    def copy_chunk(src, vector: bool, kv_s, values, indptr, b, hk, tx, c, start, count):
        """Step 1: the K and V rows of chunk ``c`` of the range at ``start`` (``count`` tokens) -> ``kv_s``
        (unrolled: all loads in flight at once); ``vector``: 16-byte loads (``src`` offset a multiple of 8)."""
        for i in T.unroll(lay["loads"]):
            with T.sblock("load_kv"):
                T.reads()
                T.writes()
                e: T.let[T.int32] = i * NT + tx
                t: T.let[T.int32] = (e // CCOLS) % C
                if e < 2 * C * CCOLS and c * C + t < count:
                    pos: T.let[T.int32] = start + c * C + t
                    page: T.let[T.int32] = values[indptr[b] + pos // P]
                    base: T.let[T.int32] = (e // (C * CCOLS)) * C * DP + t * DP + (e % CCOLS) * COPY_VEC
                    if vector:
                        for v in T.vectorized(COPY_VEC):
                            kv_s[base + v] = src[page, e // (C * CCOLS), hk, pos % P, (e % CCOLS) * COPY_VEC + v]
                    else:
                        for v in T.serial(COPY_VEC):
                            kv_s[base + v] = src[page, e // (C * CCOLS), hk, pos % P, (e % CCOLS) * COPY_VEC + v]

    @T.prim_func(s_tir=True)
    def decode_attention(q_h: T.handle, pages_h: T.handle, indptr_h: T.handle, values_h: T.handle,
                         length_h: T.handle, k_rope_h: T.handle, q_rope_h: T.handle, out_h: T.handle,
                         lse_h: T.handle, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32,
                         sm_scale: T.float32):
        T.func_attr({IS_SCHEDULED: True})
        Q, pages, indptr, values, last_len, _k_rope, _q_rope, output, lse = declare_buffers(
            op, (q_h, pages_h, indptr_h, values_h, length_h, k_rope_h, q_rope_h, out_h, lse_h))
        B = Q.shape[0]
        assert rotary_mode == 0, "lowbit_tvm decode attention supports RoPE applied before the cache only"
        part_o = T.alloc_buffer((plan.num_splits(B, HK), B, H, D), "float32")
        part_lse = T.alloc_buffer((plan.num_splits(B, HK), B, H), "float32")
        # the pages with an offset the compiler knows is a multiple of COPY_VEC (16-byte loads)
        aligned = T.decl_buffer(pages.shape, dtype, data=pages.data,
                                elem_offset=pages.elem_offset // COPY_VEC * COPY_VEC)
        for bh in T.thread_binding(B * HK, thread="blockIdx.x"):
            for s in T.thread_binding(plan.num_splits(B, HK), thread="blockIdx.y"):
                for tx in T.thread_binding(NT, thread="threadIdx.x"):
                    with T.sblock("partial"):
                        T.reads()
                        T.writes()
                        q_s = T.sblock_alloc_buffer((G, D), "float32", scope="shared")
                        kv_s = T.sblock_alloc_buffer((2 * C * DP,), dtype, scope="shared")  # flat: keeps the pad
                        w_s = T.sblock_alloc_buffer((G, C), "float32", scope="shared")
                        ml = T.sblock_alloc_buffer((SROUNDS, 2), "float32", scope="local")
                        m_s = T.sblock_alloc_buffer((G,), "float32", scope="shared")
                        l_s = T.sblock_alloc_buffer((G,), "float32", scope="shared")
                        a_s = T.sblock_alloc_buffer((G,), "float32", scope="shared")
                        o_s = T.sblock_alloc_buffer((STRIPES, G, D), "float32", scope="shared")
                        k_reg = T.sblock_alloc_buffer((LOAD_VEC,), dtype, scope="local")
                        v_reg = T.sblock_alloc_buffer((ACC_VEC,), dtype, scope="local")
                        acc = T.sblock_alloc_buffer((ROUNDS, ACC_VEC), "float32", scope="local")
                        dot = T.sblock_alloc_buffer((1,), "float32", scope="local")
                        dots = T.sblock_alloc_buffer((LOAD_VEC,), "float32", scope="local")
                        red = T.sblock_alloc_buffer((2,), "float32", scope="local")
                        b: T.let[T.int32] = bh // HK
                        hk: T.let[T.int32] = bh % HK
                        n: T.let[T.int32] = seq_len_expr(indptr, last_len, b, P)
                        per: T.let[T.int32] = plan.range_len(n, plan.num_splits(B, HK))
                        start: T.let[T.int32] = s * per
                        count: T.let[T.int32] = T.max(0, T.min(n, start + per) - start)
                        # the block's queries, pre-scaled to the log2 domain; the softmax state
                        for i in T.unroll(lay["qload"]):
                            if i * NT + tx < G * D:
                                q_s[(i * NT + tx) // D, (i * NT + tx) % D] = (
                                    T.Cast("float32", Q[b, hk * G + (i * NT + tx) // D, (i * NT + tx) % D])
                                    * sm_scale * T.float32(LOG2E))
                        for i in T.unroll(SROUNDS):
                            ml[i, 0] = T.float32(EMPTY_LSE)
                            ml[i, 1] = T.float32(0)
                        for r in T.unroll(ROUNDS):
                            for v in T.unroll(ACC_VEC):
                                acc[r, v] = T.float32(0)
                        for c in T.serial(T.ceildiv(count, C)):
                            # 1. K and V rows of the chunk -> shared memory
                            if pages.elem_offset % COPY_VEC == 0:  # the runtime's per-layer page tensors start at 0
                                copy_chunk(aligned, True, kv_s, values, indptr, b, hk, tx, c, start, count)
                            else:
                                copy_chunk(pages, False, kv_s, values, indptr, b, hk, tx, c, start, count)
                            T.tvm_storage_sync("shared")
                            # 2. one warp per query head, one lane per token: score, then the online-softmax
                            #    update with warp-shuffle max and sum (every lane keeps the head's state)
                            for i in T.unroll(SROUNDS):
                                if i * NT + tx < G * C:
                                    for v in T.unroll(LOAD_VEC):  # LOAD_VEC independent FMA chains
                                        dots[v] = T.float32(0)
                                    if c * C + tx % C < count:
                                        for d0 in T.unroll(VCOLS):
                                            for v in T.vectorized(LOAD_VEC):
                                                k_reg[v] = kv_s[(tx % C) * DP + d0 * LOAD_VEC + v]
                                            for v in T.unroll(LOAD_VEC):
                                                dots[v] = dots[v] + q_s[(i * NT + tx) // C, d0 * LOAD_VEC + v] * T.Cast(
                                                    "float32", k_reg[v])
                                    dot[0] = T.float32(0)
                                    for v in T.unroll(LOAD_VEC):
                                        dot[0] = dot[0] + dots[v]
                                    # the new maximum includes the old one (rescaling factors stay <= 1)
                                    red[0] = T.if_then_else(c * C + tx % C < count, T.max(dot[0], ml[i, 0]),
                                                            ml[i, 0])
                                    for k in T.unroll(WARP_STEPS):
                                        red[0] = T.max(red[0], T.tvm_warp_shuffle_down(
                                            FULL_MASK, red[0], C >> (k + 1), C, C))
                                    red[0] = T.tvm_warp_shuffle(FULL_MASK, red[0], 0, C, C)
                                    red[1] = T.if_then_else(c * C + tx % C < count, T.exp2(dot[0] - red[0]),
                                                            T.float32(0))
                                    w_s[(i * NT + tx) // C, tx % C] = red[1]
                                    for k in T.unroll(WARP_STEPS):
                                        red[1] = red[1] + T.tvm_warp_shuffle_down(
                                            FULL_MASK, red[1], C >> (k + 1), C, C)
                                    red[1] = T.tvm_warp_shuffle(FULL_MASK, red[1], 0, C, C)
                                    ml[i, 1] = ml[i, 1] * T.exp2(ml[i, 0] - red[0]) + red[1]
                                    if tx % C == 0:
                                        a_s[(i * NT + tx) // C] = T.exp2(ml[i, 0] - red[0])
                                    ml[i, 0] = red[0]
                            T.tvm_storage_sync("shared")
                            # 3. P.V: thread = (token stripe, query head, 4 features)
                            for r in T.unroll(ROUNDS):
                                if r * NT + tx < STRIPES * ITEMS:
                                    for v in T.unroll(ACC_VEC):
                                        acc[r, v] = acc[r, v] * a_s[((r * NT + tx) % ITEMS) // FG]
                                    for j in T.unroll(C // STRIPES):
                                        if j * STRIPES + (r * NT + tx) // ITEMS < count - c * C:
                                            for v in T.vectorized(ACC_VEC):
                                                v_reg[v] = kv_s[(C + j * STRIPES + (r * NT + tx) // ITEMS) * DP
                                                                + ((r * NT + tx) % FG) * ACC_VEC + v]
                                            for v in T.unroll(ACC_VEC):
                                                acc[r, v] = acc[r, v] + w_s[
                                                    ((r * NT + tx) % ITEMS) // FG,
                                                    j * STRIPES + (r * NT + tx) // ITEMS] * T.Cast("float32", v_reg[v])
                            T.tvm_storage_sync("shared")
                        # publish the softmax state, sum the token stripes, normalize, store
                        for i in T.unroll(SROUNDS):
                            if i * NT + tx < G * C and tx % C == 0:
                                m_s[(i * NT + tx) // C] = ml[i, 0]
                                l_s[(i * NT + tx) // C] = ml[i, 1]
                        for r in T.unroll(ROUNDS):
                            if r * NT + tx < STRIPES * ITEMS:
                                for v in T.vectorized(ACC_VEC):
                                    o_s[(r * NT + tx) // ITEMS, ((r * NT + tx) % ITEMS) // FG,
                                        ((r * NT + tx) % FG) * ACC_VEC + v] = acc[r, v]
                        T.tvm_storage_sync("shared")
                        for i in T.unroll(lay["finals"]):  # (ranges the merge skips write nothing)
                            if i * NT + tx < G * D and (count > 0 or plan.num_splits(B, HK) == 1):
                                dot[0] = T.float32(0)
                                for st in T.unroll(STRIPES):
                                    dot[0] = dot[0] + o_s[st, (i * NT + tx) // D, (i * NT + tx) % D]
                                dot[0] = T.if_then_else(l_s[(i * NT + tx) // D] > 0,
                                                        dot[0] / l_s[(i * NT + tx) // D], T.float32(0))
                                if plan.num_splits(B, HK) == 1:
                                    output[b, hk * G + (i * NT + tx) // D, (i * NT + tx) % D] = T.Cast(dtype, dot[0])
                                else:
                                    part_o[s, b, hk * G + (i * NT + tx) // D, (i * NT + tx) % D] = dot[0]
                        if tx < G and (count > 0 or plan.num_splits(B, HK) == 1):
                            if plan.num_splits(B, HK) == 1:
                                lse[b, hk * G + tx] = T.if_then_else(l_s[tx] > 0, m_s[tx] + T.log2(l_s[tx]),
                                                                     T.float32(EMPTY_LSE))
                            else:
                                part_lse[s, b, hk * G + tx] = T.if_then_else(l_s[tx] > 0, m_s[tx] + T.log2(l_s[tx]),
                                                                             T.float32(EMPTY_LSE))
        if plan.num_splits(B, HK) > 1:
            for bh in T.thread_binding(B * H, thread="blockIdx.x"):
                for tx in T.thread_binding(D, thread="threadIdx.x"):
                    with T.sblock("merge"):
                        T.reads()
                        T.writes()
                        st = T.sblock_alloc_buffer((3,), "float32", scope="local")
                        n: T.let[T.int32] = seq_len_expr(indptr, last_len, bh // H, P)
                        used: T.let[T.int32] = ceil_div(n, plan.range_len(n, plan.num_splits(B, HK)))
                        st[0] = T.float32(EMPTY_LSE)
                        st[1] = T.float32(0)
                        st[2] = T.float32(0)
                        for s in T.serial(used):
                            st[0] = T.max(st[0], part_lse[s, bh // H, bh % H])
                        for s in T.serial(used):
                            st[1] = st[1] + T.exp2(part_lse[s, bh // H, bh % H] - st[0])
                            st[2] = st[2] + T.exp2(part_lse[s, bh // H, bh % H] - st[0]) * part_o[
                                s, bh // H, bh % H, tx]
                        output[bh // H, bh % H, tx] = T.Cast(dtype, T.if_then_else(used > 0, st[2] / st[1],
                                                                                   T.float32(0)))
                        if tx == 0:
                            lse[bh // H, bh % H] = T.if_then_else(used > 0, st[0] + T.log2(st[1]),
                                                                  T.float32(EMPTY_LSE))

    return decode_attention


def supports(op: DecodeAttentionOp, config: DecodeAttentionConfig = DecodeAttentionConfig()) -> bool:
    """Whether ``decode_attention_cuda`` handles ``op`` (fp16, head_dim a multiple of 8, chunk of a warp)."""
    if op.dtype != "float16":
        return False
    try:
        _layout(op, config)
    except ValueError:
        return False
    return True
