"""Tensor intrinsics of our own, registered next to TVM's mma/ldmatrix ones.

``lowbit_decode_u4x8_{sym,asym}``: one packed word (8 int4 codes) -> 8 fp16 weights
``(q - zero) * scale`` with paired half2 arithmetic and one 16-byte shared-memory store (about
1.5 instructions a weight instead of the 7-8 of the element-wise decode). The CUDA helper is emitted into
the kernel source through the ``pragma_import_c`` annotation (``DECODE_SOURCE``).
"""
from ..tvm_api import T, TensorIntrin, load_tensor_intrinsics

DECODE_SYM = "lowbit_decode_u4x8_sym"
DECODE_ASYM = "lowbit_decode_u4x8_asym"
DECODE_SOURCE = r"""
#ifndef LOWBIT_DECODE_U4X8
#define LOWBIT_DECODE_U4X8
#include <cuda_fp16.h>
// 8 int4 codes (nibble j holds element j) -> 8 fp16 (code - zero) * scale, stored as one 16-byte vector.
// OR-ing a code into the mantissa of 1024.0h gives 1024 + code exactly; offset = 1024 + zero.
__device__ __forceinline__ void lowbit_decode_u4x8(unsigned int w, half scale, half offset, half* dst) {
  const half2 s2 = __half2half2(scale);
  const half2 o2 = __half2half2(offset);
  uint4 out;
  unsigned int* o = reinterpret_cast<unsigned int*>(&out);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    unsigned int pair = ((w >> (8 * j)) & 0xFu) | (((w >> (8 * j + 4)) & 0xFu) << 16) | 0x64006400u;
    half2 h = __hmul2(__hsub2(*reinterpret_cast<half2*>(&pair), o2), s2);
    o[j] = *reinterpret_cast<unsigned int*>(&h);
  }
  *reinterpret_cast<uint4*>(dst) = out;
}
#endif
"""


def tile_to_warp(i, j):
    """Where element (i, j) of a 16x16 mma tile lives: (lane, register index)."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + (j % 2)


def _code(packed, vj):
    shifted = T.shift_right(packed, T.Cast("uint32", vj * 4))
    return T.reinterpret("float16", T.Cast("uint16", shifted & T.uint32(15) | T.uint32(0x6400)))


@T.prim_func(s_tir=True)
def _decode_sym_desc(b: T.handle, s: T.handle, w: T.handle) -> None:
    packed = T.match_buffer(b, (1, 1), "uint32", scope="shared.dyn", offset_factor=1)
    scale = T.match_buffer(s, (1, 1), "float16", offset_factor=1)
    out = T.match_buffer(w, (1, 8), "float16", scope="shared.dyn", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0, 0], scale[0, 0])
        T.writes(out[0, 0:8])
        for j in T.serial(8):
            with T.sblock("decode"):
                vj = T.axis.spatial(8, j)
                out[0, vj] = (_code(packed[0, 0], vj) - T.float16(1032.0)) * scale[0, 0]


@T.prim_func(s_tir=True)
def _decode_sym_impl(b: T.handle, s: T.handle, w: T.handle) -> None:
    packed = T.match_buffer(b, (1, 1), "uint32", scope="shared.dyn", offset_factor=1)
    scale = T.match_buffer(s, (1, 1), "float16", offset_factor=1)
    out = T.match_buffer(w, (1, 8), "float16", scope="shared.dyn", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0, 0], scale[0, 0])
        T.writes(out[0, 0:8])
        T.evaluate(
            T.call_extern(
                "void", "lowbit_decode_u4x8", packed[0, 0], scale[0, 0], T.float16(1032.0), out.access_ptr("w")
            )
        )


@T.prim_func(s_tir=True)
def _decode_asym_desc(b: T.handle, z: T.handle, s: T.handle, w: T.handle) -> None:
    packed = T.match_buffer(b, (1, 1), "uint32", scope="shared.dyn", offset_factor=1)
    zero = T.match_buffer(z, (1, 1), "float16", offset_factor=1)
    scale = T.match_buffer(s, (1, 1), "float16", offset_factor=1)
    out = T.match_buffer(w, (1, 8), "float16", scope="shared.dyn", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0, 0], zero[0, 0], scale[0, 0])
        T.writes(out[0, 0:8])
        for j in T.serial(8):
            with T.sblock("decode"):
                vj = T.axis.spatial(8, j)
                out[0, vj] = (_code(packed[0, 0], vj) - (zero[0, 0] + T.float16(1024.0))) * scale[0, 0]


@T.prim_func(s_tir=True)
def _decode_asym_impl(b: T.handle, z: T.handle, s: T.handle, w: T.handle) -> None:
    packed = T.match_buffer(b, (1, 1), "uint32", scope="shared.dyn", offset_factor=1)
    zero = T.match_buffer(z, (1, 1), "float16", offset_factor=1)
    scale = T.match_buffer(s, (1, 1), "float16", offset_factor=1)
    out = T.match_buffer(w, (1, 8), "float16", scope="shared.dyn", offset_factor=1)
    with T.sblock("root"):
        T.reads(packed[0, 0], zero[0, 0], scale[0, 0])
        T.writes(out[0, 0:8])
        T.evaluate(
            T.call_extern(
                "void",
                "lowbit_decode_u4x8",
                packed[0, 0],
                scale[0, 0],
                zero[0, 0] + T.float16(1024.0),
                out.access_ptr("w"),
            )
        )


_REGISTERED = []


def register() -> None:
    """Register our intrinsics and load TVM's CUDA ones (idempotent)."""
    if _REGISTERED:
        return
    load_tensor_intrinsics()
    TensorIntrin.register(DECODE_SYM, _decode_sym_desc, _decode_sym_impl, override=True)
    TensorIntrin.register(DECODE_ASYM, _decode_asym_desc, _decode_asym_impl, override=True)
    _REGISTERED.append(True)
