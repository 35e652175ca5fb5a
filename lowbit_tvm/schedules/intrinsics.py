"""Tensor intrinsics of our own, registered next to TVM's mma/ldmatrix ones.

TVM ships an mma store that writes fp32 accumulators to an fp32 buffer; our kernels return fp16, so
the epilogue cast is fused into the store: each lane converts its eight fp32 accumulators of a 16x16
tile and writes them straight to global memory.
"""
from ..tvm_api import T, TensorIntrin, load_tensor_intrinsics

STORE_F32_AS_F16_GLOBAL = "lowbit_mma_store_16x16_f32_as_f16_global"
_WARP = 32
_LOCAL = 8


def _warp_to_tile(lane, local):
    row = 8 * (local % 4 // 2) + lane // 4
    col = 8 * (local // 4) + lane % 4 * 2 + local % 2
    return row, col


def _tile_to_warp(i, j):
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + (j % 2)


@T.prim_func(s_tir=True)
def _store_desc(a: T.handle, c: T.handle) -> None:
    acc = T.match_buffer(a, [_WARP, _LOCAL], dtype="float32", scope="warp")
    out = T.match_buffer(c, [16, 16], dtype="float16", scope="global")
    with T.sblock("root"):
        T.reads(acc[0:_WARP, 0:_LOCAL])
        T.writes(out[0:16, 0:16])
        for i0, i1 in T.grid(16, 16):
            with T.sblock("store"):
                v0, v1 = T.axis.remap("SS", [i0, i1])
                lane, local = T.meta_var(_tile_to_warp(v0, v1))
                T.reads(acc[lane, local])
                T.writes(out[v0, v1])
                out[v0, v1] = T.Cast("float16", acc[lane, local])


@T.prim_func(s_tir=True)
def _store_impl(a: T.handle, c: T.handle) -> None:
    s0 = T.int32()
    s1 = T.int32()
    acc = T.match_buffer(a, [_WARP, _LOCAL], dtype="float32", scope="warp", offset_factor=1)
    out = T.match_buffer(
        c, [16, 16], dtype="float16", scope="global", offset_factor=1, strides=[s0, s1]
    )
    with T.sblock("root"):
        T.reads(acc[0:_WARP, 0:_LOCAL])
        T.writes(out[0:16, 0:16])
        for lane in T.thread_binding(0, _WARP, "threadIdx.x"):
            for local in T.serial(_LOCAL):
                row, col = T.meta_var(_warp_to_tile(lane, local))
                out[row, col] = T.Cast("float16", acc[lane, local])


_REGISTERED = []


def register() -> None:
    """Register our intrinsics and load TVM's CUDA ones (idempotent)."""
    if _REGISTERED:
        return
    load_tensor_intrinsics()
    TensorIntrin.register(STORE_F32_AS_F16_GLOBAL, _store_desc, _store_impl, override=True)
    _REGISTERED.append(True)
