"""The GEMV's word dot product as a tensor intrinsic: eight int4 codes times eight fp16 activations in
``half2`` arithmetic.

``lowbit_word_dot`` (CUDA, emitted through ``pragma_import_c``) makes the codes of one packed word with the
0x6400 magic number: ``(w & 0x000F000F) | 0x64006400`` is the ``half2`` ``(1024 + q_j, 1024 + q_{j+4})``
(one ``lop3``), and the same with mask 0x00F000F0 gives ``1024 + 16 q``, scaled back by the ``hfma2`` that
subtracts the zero point. Pairs ``(j, j + 4)`` so need the activations permuted the same way (four ``prmt``,
shared by every row the thread handles). Per word: 5 logic ops, 4 subtracts, 4 ``hfma2`` and one add of the
two halves; codes minus zero are exact in fp16, each lane sums four products.

``lowbit_mma_dot`` is the same arithmetic on the tensor-core layout (``"mma"`` weights): the four words of
lanes ``4r .. 4r + 3`` of a 16x16 tile hold tile rows ``r`` (nibbles 0, 1, 4, 5) and ``r + 8`` (nibbles 2, 3,
6, 7) over all 16 K; nibble pairs ``(0, 4)`` and ``(2, 6)`` multiply activations ``(2q, 2q + 1)``, pairs
``(1, 5)`` and ``(3, 7)`` activations ``(2q + 8, 2q + 9)``, which are ``half2`` ``q`` of the tile's two
16-byte activation loads as they are: no permutation. It writes both rows' sums (codes minus 8).

The descriptions reuse ``lowbit_tvm.ops.w4a16.word_dot`` / ``mma_word_dot``, the expressions of the op's
``dot`` blocks.
"""
from ..ops.w4a16 import mma_word_dot, word_dot
from ..tvm_api import T, TensorIntrin

WORD_DOT_SYM = "lowbit_gemv_word_dot_sym"
WORD_DOT_ASYM = "lowbit_gemv_word_dot_asym"
MMA_DOT = "lowbit_gemv_mma_dot"
GEMV_SOURCE = r"""
#ifndef LOWBIT_GEMV_WORD_DOT
#define LOWBIT_GEMV_WORD_DOT
#include <cuda_fp16.h>
__device__ __forceinline__ unsigned int lowbit_lop3_and_or(unsigned int a, unsigned int mask, unsigned int bits) {
  unsigned int r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));  // (a & mask) | bits
  return r;
}
__device__ __forceinline__ half2 lowbit_bits_half2(unsigned int bits) {
  return *reinterpret_cast<half2*>(&bits);
}
// sum_j (q_j - zero) * x_j over the 8 nibbles of w; x holds x_0..x_7 as 4 half2 (k order).
// off_lo = 1024 + zero (pairs of low nibbles), neg_off_hi = -(64 + zero) (high nibbles, read as 1024 + 16 q).
__device__ __forceinline__ half lowbit_word_dot_core(unsigned int w, uint4 x, half2 off_lo, half2 neg_off_hi) {
  const half2 sixteenth = lowbit_bits_half2(0x2C002C00u);
  const half2 x04 = lowbit_bits_half2(__byte_perm(x.x, x.z, 0x5410));
  const half2 x15 = lowbit_bits_half2(__byte_perm(x.x, x.z, 0x7632));
  const half2 x26 = lowbit_bits_half2(__byte_perm(x.y, x.w, 0x5410));
  const half2 x37 = lowbit_bits_half2(__byte_perm(x.y, x.w, 0x7632));
  const unsigned int w8 = w >> 8;
  const half2 q04 = lowbit_bits_half2(lowbit_lop3_and_or(w, 0x000F000Fu, 0x64006400u));
  const half2 q15 = lowbit_bits_half2(lowbit_lop3_and_or(w, 0x00F000F0u, 0x64006400u));
  const half2 q26 = lowbit_bits_half2(lowbit_lop3_and_or(w8, 0x000F000Fu, 0x64006400u));
  const half2 q37 = lowbit_bits_half2(lowbit_lop3_and_or(w8, 0x00F000F0u, 0x64006400u));
  half2 acc = __hmul2(__hsub2(q04, off_lo), x04);
  acc = __hfma2(__hfma2(q15, sixteenth, neg_off_hi), x15, acc);
  acc = __hfma2(__hsub2(q26, off_lo), x26, acc);
  acc = __hfma2(__hfma2(q37, sixteenth, neg_off_hi), x37, acc);
  return __hadd(__low2half(acc), __high2half(acc));
}
// Symmetric: zero 8, constants as bit patterns (1032 = 0x6408, -72 = 0xD480).
__device__ __forceinline__ half lowbit_word_dot_sym(unsigned int w, uint4 x) {
  return lowbit_word_dot_core(w, x, lowbit_bits_half2(0x64086408u), lowbit_bits_half2(0xD480D480u));
}
// offset = 1024 + zero.
__device__ __forceinline__ half lowbit_word_dot(unsigned int w, uint4 x, half offset) {
  return lowbit_word_dot_core(w, x, __half2half2(offset), __half2half2(__hsub(__float2half(960.0f), offset)));
}
// Rows r (low half of the result) and r + 8 (high half) of a 16x16 "mma" tile: the words of lanes
// 4r..4r+3 (w.x..w.w), the tile's activations x0..x7 (xl) and x8..x15 (xh); codes minus 8. Writes out[0..1].
__device__ __forceinline__ int lowbit_mma_dot(half* out, uint4 w, uint4 xl, uint4 xh) {
  const half2 sixteenth = lowbit_bits_half2(0x2C002C00u);
  const half2 off_lo = lowbit_bits_half2(0x64086408u);
  const half2 neg_off_hi = lowbit_bits_half2(0xD480D480u);
  const unsigned int words[4] = {w.x, w.y, w.z, w.w};
  const unsigned int low[4] = {xl.x, xl.y, xl.z, xl.w};
  const unsigned int high[4] = {xh.x, xh.y, xh.z, xh.w};
  half2 row = __float2half2_rn(0.0f);
  half2 row8 = __float2half2_rn(0.0f);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const half2 a01 = lowbit_bits_half2(low[q]);
    const half2 a89 = lowbit_bits_half2(high[q]);
    const unsigned int w8 = words[q] >> 8;
    row = __hfma2(__hsub2(lowbit_bits_half2(lowbit_lop3_and_or(words[q], 0x000F000Fu, 0x64006400u)), off_lo), a01, row);
    row = __hfma2(__hfma2(lowbit_bits_half2(lowbit_lop3_and_or(words[q], 0x00F000F0u, 0x64006400u)), sixteenth,
                          neg_off_hi), a89, row);
    row8 = __hfma2(__hsub2(lowbit_bits_half2(lowbit_lop3_and_or(w8, 0x000F000Fu, 0x64006400u)), off_lo), a01, row8);
    row8 = __hfma2(__hfma2(lowbit_bits_half2(lowbit_lop3_and_or(w8, 0x00F000F0u, 0x64006400u)), sixteenth,
                           neg_off_hi), a89, row8);
  }
  out[0] = __hadd(__low2half(row), __high2half(row));
  out[1] = __hadd(__low2half(row8), __high2half(row8));
  return 0;
}
#endif
"""


def _acts(act):
    return [act[0], act[1], act[2], act[3], act[4], act[5], act[6], act[7]]


@T.prim_func(s_tir=True)
def _word_dot_sym_desc(b: T.handle, a: T.handle, d: T.handle) -> None:
    packed = T.match_buffer(b, (1,), "uint32", scope="local", offset_factor=1)
    act = T.match_buffer(a, (8,), "float16", scope="local", offset_factor=1)
    out = T.match_buffer(d, (1,), "float16", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:1], act[0:8])
        T.writes(out[0:1])
        out[0] = word_dot(packed[0], _acts(act), T.float16(1032.0))


@T.prim_func(s_tir=True)
def _word_dot_sym_impl(b: T.handle, a: T.handle, d: T.handle) -> None:
    packed = T.match_buffer(b, (1,), "uint32", scope="local", offset_factor=1)
    act = T.match_buffer(a, (8,), "float16", scope="local", offset_factor=1)
    out = T.match_buffer(d, (1,), "float16", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:1], act[0:8])
        T.writes(out[0:1])
        out[0] = T.call_pure_extern("float16", "lowbit_word_dot_sym", packed[0], act.vload([0], "float16x8"))


@T.prim_func(s_tir=True)
def _word_dot_asym_desc(b: T.handle, z: T.handle, a: T.handle, d: T.handle) -> None:
    packed = T.match_buffer(b, (1,), "uint32", scope="local", offset_factor=1)
    act = T.match_buffer(a, (8,), "float16", scope="local", offset_factor=1)
    zero = T.match_buffer(z, (1,), "float16", offset_factor=1)
    out = T.match_buffer(d, (1,), "float16", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:1], zero[0:1], act[0:8])
        T.writes(out[0:1])
        out[0] = word_dot(packed[0], _acts(act), zero[0] + T.float16(1024.0))


@T.prim_func(s_tir=True)
def _word_dot_asym_impl(b: T.handle, z: T.handle, a: T.handle, d: T.handle) -> None:
    packed = T.match_buffer(b, (1,), "uint32", scope="local", offset_factor=1)
    act = T.match_buffer(a, (8,), "float16", scope="local", offset_factor=1)
    zero = T.match_buffer(z, (1,), "float16", offset_factor=1)
    out = T.match_buffer(d, (1,), "float16", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:1], zero[0:1], act[0:8])
        T.writes(out[0:1])
        out[0] = T.call_pure_extern(
            "float16", "lowbit_word_dot", packed[0], act.vload([0], "float16x8"), zero[0] + T.float16(1024.0)
        )


@T.prim_func(s_tir=True)
def _mma_dot_desc(b: T.handle, a: T.handle, d: T.handle) -> None:
    words = T.match_buffer(b, (4,), "uint32", scope="local", offset_factor=1)
    act = T.match_buffer(a, (16,), "float16", scope="local", offset_factor=1)
    out = T.match_buffer(d, (2,), "float16", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(words[0:4], act[0:16])
        T.writes(out[0:2])
        for h in T.serial(2):
            with T.sblock("dot"):
                vh = T.axis.spatial(2, h)
                out[vh] = mma_word_dot([words[0], words[1], words[2], words[3]], [act[j] for j in range(16)],
                                       T.float16(1032.0), vh)


@T.prim_func(s_tir=True)
def _mma_dot_impl(b: T.handle, a: T.handle, d: T.handle) -> None:
    words = T.match_buffer(b, (4,), "uint32", scope="local", offset_factor=1)
    act = T.match_buffer(a, (16,), "float16", scope="local", offset_factor=1)
    out = T.match_buffer(d, (2,), "float16", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(words[0:4], act[0:16])
        T.writes(out[0:2])
        T.evaluate(T.call_extern("int32", "lowbit_mma_dot", out.access_ptr("w"), words.vload([0], "uint32x4"),
                                 act.vload([0], "float16x8"), act.vload([8], "float16x8")))


_REGISTERED = []


def register() -> None:
    """Register the GEMV intrinsics (idempotent; does not load TVM's own CUDA intrinsics)."""
    if _REGISTERED:
        return
    TensorIntrin.register(WORD_DOT_SYM, _word_dot_sym_desc, _word_dot_sym_impl, override=True)
    TensorIntrin.register(WORD_DOT_ASYM, _word_dot_asym_desc, _word_dot_asym_impl, override=True)
    TensorIntrin.register(MMA_DOT, _mma_dot_desc, _mma_dot_impl, override=True)
    _REGISTERED.append(True)
