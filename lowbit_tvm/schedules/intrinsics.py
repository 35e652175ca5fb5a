"""Tensor intrinsics of our own, registered next to TVM's mma/ldmatrix ones.

``lowbit_decode_mma_{sym,asym}``: a 16x16 weight tile in the pre-shuffled fragment layout
(``lowbit_tvm.quant.mma_layout``) -> the warp's mma.sync B fragments, in registers: each lane reads its one
word from shared memory and makes its 8 fp16 weights with 4 shift/mask + 4 ``half2`` subtract and multiply
pairs. It replaces the decode-to-shared + ``ldmatrix`` round trip.

The CUDA helpers are emitted into the kernel source through the ``pragma_import_c`` annotation
(``DECODE_SOURCE``).
"""
from ..quant import mma_layout
from ..tvm_api import T, TensorIntrin, load_tensor_intrinsics

DECODE_MMA_SYM = "lowbit_decode_mma_sym"
DECODE_MMA_ASYM = "lowbit_decode_mma_asym"
DECODE_SOURCE = r"""
#ifndef LOWBIT_DECODE_MMA
#define LOWBIT_DECODE_MMA
#include <cuda_fp16.h>
// OR-ing a 4-bit code into the mantissa of 1024.0h gives 1024 + code exactly; offset = 1024 + zero.
// One lane's word of a pre-shuffled 16x16 tile -> its 8 mma.sync B-fragment registers (as a uint4 of half2).
// Register pair p (registers 2p, 2p+1) sits in nibbles p and p+4 and belongs to tile row lane/4 + 8*(p/2).
__device__ __forceinline__ void lowbit_decode_mma(unsigned int w, half s0, half s1, half o0, half o1, half* dst) {
  const half2 scale[2] = {__half2half2(s0), __half2half2(s1)};
  const half2 offset[2] = {__half2half2(o0), __half2half2(o1)};
  uint4 out;
  unsigned int* o = reinterpret_cast<unsigned int*>(&out);
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    unsigned int pair = ((w >> (4 * p)) & 0x000F000Fu) | 0x64006400u;
    half2 h = __hmul2(__hsub2(*reinterpret_cast<half2*>(&pair), offset[p >> 1]), scale[p >> 1]);
    o[p] = *reinterpret_cast<unsigned int*>(&h);
  }
  *reinterpret_cast<uint4*>(dst) = out;
}
#endif
"""


def tile_to_warp(i, j):
    """TVM's name for element (i, j) of a 16x16 mma tile in a warp buffer: (lane, local index).

    TVM's ldmatrix and mma intrinsics describe their warp buffers with this map; our decode intrinsic
    must use the same one so its warp buffer feeds TVM's mma. The registers it physically fills are
    ``mma_layout.fragment_position``'s.
    """
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + (j % 2)


def _fragment_code(word, vi, vj):
    """The biased fp16 (1024 + code) of tile element (vi, vj), written as the op writes it."""
    shift = T.Cast("uint32", mma_layout.nibble_of(vi, vj) * 4)
    return T.reinterpret("float16", T.Cast("uint16", T.shift_right(word, shift) & T.uint32(15) | T.uint32(0x6400)))


@T.prim_func(s_tir=True)
def _decode_mma_sym_desc(b: T.handle, s: T.handle, w: T.handle) -> None:
    s0 = T.int32()
    s1 = T.int32()
    packed = T.match_buffer(b, (32,), "uint32", scope="shared.dyn", offset_factor=1)
    scale = T.match_buffer(s, (16, 1), "float16", strides=[s0, s1], offset_factor=1)
    out = T.match_buffer(w, (32, 8), "float16", scope="warp", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:32], scale[0:16, 0:1])
        T.writes(out[0:32, 0:8])
        for i, j in T.grid(16, 16):
            with T.sblock("decode"):
                vi, vj = T.axis.remap("SS", [i, j])
                lane, register = T.meta_var(tile_to_warp(vi, vj))
                out[lane, register] = (_fragment_code(packed[lane], vi, vj) - T.float16(1032.0)) * scale[vi, 0]


@T.prim_func(s_tir=True)
def _decode_mma_sym_impl(b: T.handle, s: T.handle, w: T.handle) -> None:
    s0 = T.int32()
    s1 = T.int32()
    packed = T.match_buffer(b, (32,), "uint32", scope="shared.dyn", offset_factor=1)
    scale = T.match_buffer(s, (16, 1), "float16", strides=[s0, s1], offset_factor=1)
    out = T.match_buffer(w, (32, 8), "float16", scope="warp", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:32], scale[0:16, 0:1])
        T.writes(out[0:32, 0:8])
        for tx in T.thread_binding(0, 32, "threadIdx.x"):
            # A plain store tells LowerWarpMemory the lane stride (8); the helper overwrites it.
            out[tx, 0] = T.float16(0.0)
            T.evaluate(
                T.call_extern(
                    "void",
                    "lowbit_decode_mma",
                    packed[tx],
                    scale[tx // 4, 0],
                    scale[tx // 4 + 8, 0],
                    T.float16(1032.0),
                    T.float16(1032.0),
                    T.address_of(out[tx, 0]),
                )
            )


@T.prim_func(s_tir=True)
def _decode_mma_asym_desc(b: T.handle, z: T.handle, s: T.handle, w: T.handle) -> None:
    s0 = T.int32()
    s1 = T.int32()
    z0 = T.int32()
    z1 = T.int32()
    packed = T.match_buffer(b, (32,), "uint32", scope="shared.dyn", offset_factor=1)
    zero = T.match_buffer(z, (16, 1), "float16", strides=[z0, z1], offset_factor=1)
    scale = T.match_buffer(s, (16, 1), "float16", strides=[s0, s1], offset_factor=1)
    out = T.match_buffer(w, (32, 8), "float16", scope="warp", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:32], zero[0:16, 0:1], scale[0:16, 0:1])
        T.writes(out[0:32, 0:8])
        for i, j in T.grid(16, 16):
            with T.sblock("decode"):
                vi, vj = T.axis.remap("SS", [i, j])
                lane, register = T.meta_var(tile_to_warp(vi, vj))
                out[lane, register] = (
                    _fragment_code(packed[lane], vi, vj) - (zero[vi, 0] + T.float16(1024.0))
                ) * scale[vi, 0]


@T.prim_func(s_tir=True)
def _decode_mma_asym_impl(b: T.handle, z: T.handle, s: T.handle, w: T.handle) -> None:
    s0 = T.int32()
    s1 = T.int32()
    z0 = T.int32()
    z1 = T.int32()
    packed = T.match_buffer(b, (32,), "uint32", scope="shared.dyn", offset_factor=1)
    zero = T.match_buffer(z, (16, 1), "float16", strides=[z0, z1], offset_factor=1)
    scale = T.match_buffer(s, (16, 1), "float16", strides=[s0, s1], offset_factor=1)
    out = T.match_buffer(w, (32, 8), "float16", scope="warp", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0:32], zero[0:16, 0:1], scale[0:16, 0:1])
        T.writes(out[0:32, 0:8])
        for tx in T.thread_binding(0, 32, "threadIdx.x"):
            out[tx, 0] = T.float16(0.0)  # the lane stride for LowerWarpMemory, as in the symmetric one
            T.evaluate(
                T.call_extern(
                    "void",
                    "lowbit_decode_mma",
                    packed[tx],
                    scale[tx // 4, 0],
                    scale[tx // 4 + 8, 0],
                    zero[tx // 4, 0] + T.float16(1024.0),
                    zero[tx // 4 + 8, 0] + T.float16(1024.0),
                    T.address_of(out[tx, 0]),
                )
            )


_REGISTERED = []


def register() -> None:
    """Register our intrinsics and load TVM's CUDA ones (idempotent)."""
    if _REGISTERED:
        return
    load_tensor_intrinsics()
    TensorIntrin.register(DECODE_MMA_SYM, _decode_mma_sym_desc, _decode_mma_sym_impl, override=True)
    TensorIntrin.register(DECODE_MMA_ASYM, _decode_mma_asym_desc, _decode_mma_asym_impl, override=True)
    _REGISTERED.append(True)
