"""Tensor intrinsics of the int8 tensor-core GEMM (W4A8 / W8A8), registered next to TVM's mma ones.

- ``lowbit_s4_to_s8`` / ``lowbit_s8_frag``: a 16x32 weight tile in the pre-shuffled fragment layout
  (``lowbit_tvm.quant.s8_layout``) -> the warp's ``mma.sync.m16n8k32`` B fragments, in registers. int4: each
  lane reads its two words and makes its 4 registers with 2 shifts + 4 masks (bytes ``16 q``); int8: its four
  words as they are.
- ``lowbit_rescale_i32``: per K group, ``acc_f32 += float(P_i32) * scale[column]`` over a 16x16 accumulator
  tile, lane by lane in the mma C-fragment layout (TVM's ``shared_16x16_to_ldmatrix_32x8_layout`` is the
  physical one for C). ``..._fast`` converts int32 -> fp32 with the 1.5 * 2^23 trick (exact below 2^22 in
  magnitude: int4 groups of 128 reach at most 128 * 127 * 128).
- ``mma_ldmatrix_i8_a_dyn``: TVM's int8 A ldmatrix on dynamic shared memory.
- W4A4 (``lowbit_tvm.ops.w4a4``): ``lowbit_mma_s4s4s32_trans_b``, a 16x16x64 int4 tile product as two
  ``mma.sync.m16n8k64.s4.s4.s32`` on byte fragments (two codes per byte: the 16x64 int4 tile has the register
  layout of the 16x32 int8 one, so the int8 ldmatrix and weight fragments serve it unchanged), and
  ``lowbit_rescale_i32_f32_row[_fast]``: the rescale times a per-row (token, group) activation scale too.
"""
from ..ops.w4a4 import nibble
from ..ops.w4a8 import fragment_value
from ..quant import s8_layout
from ..tvm_api import T, TensorIntrin, load_tensor_intrinsics

DECODE_S4 = "lowbit_decode_s4_s8"
DECODE_S8 = "lowbit_decode_s8_s8"
RESCALE = "lowbit_rescale_i32_f32"
RESCALE_FAST = "lowbit_rescale_i32_f32_fast"
RESCALE_ROW = "lowbit_rescale_i32_f32_row"
RESCALE_ROW_FAST = "lowbit_rescale_i32_f32_row_fast"
MMA_S4 = "lowbit_mma_s4s4s32_trans_b"
LDMATRIX_I8_A_DYN = "lowbit_ldmatrix_i8_a_dyn"
SOURCE = r"""
#ifndef LOWBIT_S8_FRAG
#define LOWBIT_S8_FRAG
// int4 codes (two's complement nibbles, pre-shuffled) -> int8 fragment bytes 16*q: register r is
// (w[r/2] << 4) & 0xF0F0F0F0 for even r, w[r/2] & 0xF0F0F0F0 for odd r.
__device__ __forceinline__ void lowbit_s4_to_s8(unsigned int w0, unsigned int w1, void* dst) {
  uint4 out;
  out.x = (w0 << 4) & 0xF0F0F0F0u;
  out.y = w0 & 0xF0F0F0F0u;
  out.z = (w1 << 4) & 0xF0F0F0F0u;
  out.w = w1 & 0xF0F0F0F0u;
  *reinterpret_cast<uint4*>(dst) = out;
}
__device__ __forceinline__ void lowbit_s8_frag(unsigned int w0, unsigned int w1, unsigned int w2, unsigned int w3,
                                               void* dst) {
  *reinterpret_cast<uint4*>(dst) = make_uint4(w0, w1, w2, w3);
}
#endif
"""


def a_map(i, j):
    """TVM's name (lane, local) of element (i, j) of a 16x32 int8 operand tile in a warp buffer."""
    return 4 * (i % 8) + (j % 16) // 4, 8 * (j // 16) + (i // 8) * 4 + j % 4


def c_map(i, j):
    """(lane, local) of element (i, j) of a 16x16 accumulator tile (TVM's map, also the physical one)."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + (j % 2)


def _tile_value(packed, bits, i, j):
    """The op's decode expression for tile element (i, j), reading the tile's ``[32, words]`` buffer."""
    return fragment_value(lambda word: packed[s8_layout.lane_of(i, j), word], bits, i, j)


def _words(packed, lane, words):
    return [packed[lane, w] for w in range(words)]


def _decode_pair(bits, helper):
    words = s8_layout.WORDS[bits]

    @T.prim_func(s_tir=True)
    def desc(b: T.handle, w: T.handle) -> None:
        packed = T.match_buffer(b, (32, words), "uint32", scope="shared.dyn", offset_factor=1)
        out = T.match_buffer(w, (32, 16), "int8", scope="warp", offset_factor=1)
        with T.sblock("root"):
            T.reads(packed[0:32, 0:words])
            T.writes(out[0:32, 0:16])
            for i, j in T.grid(16, 32):
                with T.sblock("decode"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    lane, local = T.meta_var(a_map(vi, vj))
                    out[lane, local] = _tile_value(packed, bits, vi, vj)

    @T.prim_func(s_tir=True)
    def impl(b: T.handle, w: T.handle) -> None:
        packed = T.match_buffer(b, (32, words), "uint32", scope="shared.dyn", offset_factor=1)
        out = T.match_buffer(w, (32, 16), "int8", scope="warp", offset_factor=1)
        with T.sblock("root"):
            T.reads(packed[0:32, 0:words])
            T.writes(out[0:32, 0:16])
            for tx in T.thread_binding(0, 32, "threadIdx.x"):
                out[tx, 0] = T.int8(0)  # a plain store tells LowerWarpMemory the lane stride (16)
                # The words are passed as loads (not a pointer) so that TVM's barrier insertion sees the shared
                # memory read: with a pointer, a kernel without a software pipeline decoded before __syncthreads.
                T.evaluate(T.call_extern("void", helper, *_words(packed, tx, words), T.address_of(out[tx, 0])))

    return desc, impl


@T.prim_func(s_tir=True)
def _rescale_desc(p: T.handle, s: T.handle, c: T.handle) -> None:
    s0 = T.int32()
    s1 = T.int32()
    part = T.match_buffer(p, (32, 8), "int32", scope="warp", offset_factor=1)
    scale = T.match_buffer(s, (1, 16), "float16", strides=[s0, s1], offset_factor=1)
    acc = T.match_buffer(c, (32, 8), "float32", scope="warp", offset_factor=1)
    with T.sblock("root"):
        T.reads(acc[0:32, 0:8], part[0:32, 0:8], scale[0:1, 0:16])
        T.writes(acc[0:32, 0:8])
        for i, j in T.grid(16, 16):
            with T.sblock("rescale"):
                vi, vj = T.axis.remap("SS", [i, j])
                lane, local = T.meta_var(c_map(vi, vj))
                acc[lane, local] = acc[lane, local] + T.Cast("float32", part[lane, local]) * T.Cast("float32", scale[0, vj])


def _rescale_impl(exact_convert: bool):
    """``acc += float(P) * scale`` per lane. ``exact_convert=False`` makes float(P) as
    ``bits(P + 0x4B400000) - 12582912.0f`` (exact for |P| < 2^22: one integer and one float add at full rate,
    where the I2F conversion runs at a quarter of it and otherwise bounds the per-group rescale)."""

    def to_float(value):
        if exact_convert:
            return T.Cast("float32", value)
        return T.reinterpret("float32", value + T.int32(0x4B400000)) - T.float32(12582912.0)

    @T.prim_func(s_tir=True)
    def impl(p: T.handle, s: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        part = T.match_buffer(p, (32, 8), "int32", scope="warp", offset_factor=1)
        scale = T.match_buffer(s, (1, 16), "float16", strides=[s0, s1], offset_factor=1)
        acc = T.match_buffer(c, (32, 8), "float32", scope="warp", offset_factor=1)
        with T.sblock("root"):
            T.reads(acc[0:32, 0:8], part[0:32, 0:8], scale[0:1, 0:16])
            T.writes(acc[0:32, 0:8])
            for tx in T.thread_binding(0, 32, "threadIdx.x"):
                for local in T.unroll(8):
                    acc[tx, local] = acc[tx, local] + to_float(part[tx, local]) * T.Cast(
                        "float32", scale[0, 8 * (local // 4) + 2 * (tx % 4) + local % 2]
                    )

    return impl


@T.prim_func(s_tir=True)
def _rescale_row_desc(p: T.handle, s: T.handle, a: T.handle, c: T.handle) -> None:
    s0 = T.int32()
    s1 = T.int32()
    a0 = T.int32()
    a1 = T.int32()
    part = T.match_buffer(p, (32, 8), "int32", scope="warp", offset_factor=1)
    scale = T.match_buffer(s, (1, 16), "float16", strides=[s0, s1], offset_factor=1)
    row_scale = T.match_buffer(a, (16, 1), "float32", strides=[a0, a1], offset_factor=1)
    acc = T.match_buffer(c, (32, 8), "float32", scope="warp", offset_factor=1)
    with T.sblock("root"):
        T.reads(acc[0:32, 0:8], part[0:32, 0:8], scale[0:1, 0:16], row_scale[0:16, 0:1])
        T.writes(acc[0:32, 0:8])
        for i, j in T.grid(16, 16):
            with T.sblock("rescale"):
                vi, vj = T.axis.remap("SS", [i, j])
                lane, local = T.meta_var(c_map(vi, vj))
                acc[lane, local] = acc[lane, local] + T.Cast("float32", part[lane, local]) * (
                    T.Cast("float32", scale[0, vj]) * row_scale[vi, 0]
                )


def _rescale_row_impl(exact_convert: bool):
    """``acc += float(P) * (scale[column] * row_scale[row])`` per lane (C-fragment rows ``lane / 4`` and
    ``lane / 4 + 8``); the conversion as in :func:`_rescale_impl`."""

    def to_float(value):
        if exact_convert:
            return T.Cast("float32", value)
        return T.reinterpret("float32", value + T.int32(0x4B400000)) - T.float32(12582912.0)

    @T.prim_func(s_tir=True)
    def impl(p: T.handle, s: T.handle, a: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        a0 = T.int32()
        a1 = T.int32()
        part = T.match_buffer(p, (32, 8), "int32", scope="warp", offset_factor=1)
        scale = T.match_buffer(s, (1, 16), "float16", strides=[s0, s1], offset_factor=1)
        row_scale = T.match_buffer(a, (16, 1), "float32", strides=[a0, a1], offset_factor=1)
        acc = T.match_buffer(c, (32, 8), "float32", scope="warp", offset_factor=1)
        with T.sblock("root"):
            T.reads(acc[0:32, 0:8], part[0:32, 0:8], scale[0:1, 0:16], row_scale[0:16, 0:1])
            T.writes(acc[0:32, 0:8])
            for tx in T.thread_binding(0, 32, "threadIdx.x"):
                for local in T.unroll(8):
                    acc[tx, local] = acc[tx, local] + to_float(part[tx, local]) * (
                        T.Cast("float32", scale[0, 8 * (local // 4) + 2 * (tx % 4) + local % 2])
                        * row_scale[tx // 4 + 8 * (local % 4 // 2), 0]
                    )

    return impl


@T.prim_func(s_tir=True)
def _mma_s4_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (32, 16), "int8", align=64, offset_factor=32, scope="warp")
    B = T.match_buffer(b, (32, 16), "int8", align=64, offset_factor=32, scope="warp")
    C = T.match_buffer(c, (32, 8), "int32", align=64, offset_factor=16, scope="warp")
    with T.sblock("root"):
        T.reads(C[0:32, 0:8], A[0:32, 0:16], B[0:32, 0:16])
        T.writes(C[0:32, 0:8])
        for i, j, k, h in T.grid(16, 16, 32, 2):
            with T.sblock("C"):
                vi, vj, vk, vh = T.axis.remap("SSRR", [i, j, k, h])
                lane_c, local_c = T.meta_var(c_map(vi, vj))
                lane_a, local_a = T.meta_var(a_map(vi, vk))
                lane_b, local_b = T.meta_var(a_map(vj, vk))
                C[lane_c, local_c] = C[lane_c, local_c] + nibble(A[lane_a, local_a], vh) * nibble(B[lane_b, local_b], vh)


@T.prim_func(s_tir=True)
def _mma_s4_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (32, 16), "int8", align=64, offset_factor=32, scope="warp")
    B = T.match_buffer(b, (32, 16), "int8", align=64, offset_factor=32, scope="warp")
    C = T.match_buffer(c, (32, 8), "int32", align=64, offset_factor=16, scope="warp")
    with T.sblock("root"):
        T.reads(C[0:32, 0:8], A[0:32, 0:16], B[0:32, 0:16])
        T.writes(C[0:32, 0:8])
        for tx in T.thread_binding(0, 32, "threadIdx.x"):
            # Output columns 0-7 read the lane's B bytes 0-7 (fragment rows 0-7), columns 8-15 bytes 8-15.
            for half in T.unroll(2):
                T.evaluate(
                    T.ptx_legacy.mma(
                        "m16n8k64", "row", "col", "int4", "int4", "int32",
                        A.data, A.elem_offset + tx * 16,
                        B.data, B.elem_offset + tx * 16 + half * 8,
                        C.data, C.elem_offset + tx * 8 + half * 4,
                        False,
                        dtype="int32",
                    )
                )


#: Largest |int32 group sum| that the fast conversion handles exactly.
FAST_CONVERT_LIMIT = 1 << 22


_REGISTERED = []


def register():
    """Register our intrinsics and load TVM's CUDA ones (idempotent); returns TVM's intrinsic module."""
    cuda = load_tensor_intrinsics()
    if not _REGISTERED:
        TensorIntrin.register(DECODE_S4, *_decode_pair(4, "lowbit_s4_to_s8"), override=True)
        TensorIntrin.register(DECODE_S8, *_decode_pair(8, "lowbit_s8_frag"), override=True)
        TensorIntrin.register(RESCALE, _rescale_desc, _rescale_impl(True), override=True)
        TensorIntrin.register(RESCALE_FAST, _rescale_desc, _rescale_impl(False), override=True)
        TensorIntrin.register(RESCALE_ROW, _rescale_row_desc, _rescale_row_impl(True), override=True)
        TensorIntrin.register(RESCALE_ROW_FAST, _rescale_row_desc, _rescale_row_impl(False), override=True)
        TensorIntrin.register(MMA_S4, _mma_s4_desc, _mma_s4_impl, override=True)
        TensorIntrin.register(
            LDMATRIX_I8_A_DYN, *cuda.get_ldmatrix_intrin(32, "int8", "A", False, "shared.dyn"), override=True
        )
        _REGISTERED.append(True)
    return cuda
