"""A streaming 16-byte weight load as a tensor intrinsic: ``ld.global.nc`` with L2 evict-first.

Weights are read once per call: ``lowbit_ldg_stream`` loads four uint32 words bypassing L1
(``L1::no_allocate``) with an L2 cache policy of ``evict_first`` (``createpolicy.fractional``), so the
streamed weight lines are the first replaced in L2 and leave resident data (activations, outputs, other lines)
in place instead of evicting it (Marlin's weight copies carry the same evict-first hint, on ``cp.async``).
On by default in both GEMVs since the v8 H100 sweep (benchmarks/NOTES.md). The description is a plain copy
of four consecutive words from global memory into a thread's registers; GEMV schedules tensorize their
weight cache-read copies with it (``STREAM_LOAD``).
"""
from ..tvm_api import T, TensorIntrin

STREAM_LOAD = "lowbit_ldg_stream_u32x4"
STREAM_SOURCE = r"""
#ifndef LOWBIT_LDG_STREAM
#define LOWBIT_LDG_STREAM
__device__ __forceinline__ int lowbit_ldg_stream(unsigned int* dst, const unsigned int* src) {
  uint4 v;
  asm("{\n"
      "  .reg .b64 policy;\n"
      "  createpolicy.fractional.L2::evict_first.b64 policy, 1.0;\n"
      "  ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], policy;\n"
      "}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(src));
  *reinterpret_cast<uint4*>(dst) = v;
  return 0;
}
#endif
"""


@T.prim_func(s_tir=True)
def _stream_desc(s: T.handle, d: T.handle) -> None:
    src = T.match_buffer(s, (4,), "uint32", offset_factor=1)
    dst = T.match_buffer(d, (4,), "uint32", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(src[0:4])
        T.writes(dst[0:4])
        for i in T.serial(4):
            with T.sblock("copy"):
                vi = T.axis.spatial(4, i)
                dst[vi] = src[vi]


@T.prim_func(s_tir=True)
def _stream_impl(s: T.handle, d: T.handle) -> None:
    src = T.match_buffer(s, (4,), "uint32", offset_factor=1)
    dst = T.match_buffer(d, (4,), "uint32", scope="local", offset_factor=1)
    with T.sblock("root"):
        T.reads(src[0:4])
        T.writes(dst[0:4])
        T.evaluate(T.call_extern("int32", "lowbit_ldg_stream", dst.access_ptr("w"), src.access_ptr("r")))


_REGISTERED = []


def register() -> None:
    """Register ``STREAM_LOAD`` (idempotent)."""
    if not _REGISTERED:
        TensorIntrin.register(STREAM_LOAD, _stream_desc, _stream_impl, override=True)
        _REGISTERED.append(True)
