"""Tests for lowbit_tvm.codegen: CUDA targets, binary (fatbin) builds, deployable libraries.

Everything but the ``gpu`` test runs without a GPU: CUDA kernels are compiled by nvcc and checked
by format, and libraries are loaded in fresh processes that never import the ``tvm`` package (so
neither ``tvm.support.nvcc`` nor its JIT callback ``tvm_callback_cuda_compile`` exists there).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lowbit_tvm.codegen import (
    CompiledModule,
    arch_of,
    build_module,
    cuda_target,
    detect_cuda_arch,
    device_code,
    device_code_format,
    export_library,
    load_library,
    nvcc_compile_callback,
    read_sidecar,
    sidecar_path,
)
from lowbit_tvm.codegen import library as library_mod
from lowbit_tvm.errors import CodegenError, LibraryError, LibraryMismatchError, LowbitError
from lowbit_tvm.tvm_api import TVM_VERSION, Schedule, T, Target, tvm

REPO = Path(__file__).resolve().parents[1]
N = 1024
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
HAS_NVCC = shutil.which("nvcc") is not None
HAS_GPU = bool(tvm.cuda(0).exist)
needs_nvcc = pytest.mark.skipif(not HAS_NVCC, reason="nvcc is not on PATH")
# Without TVM's CUDA runtime (no NVIDIA driver) or with TVM_COMPILE_FORCE_FALLBACK=1, TVM's CUDA
# codegen keeps the CUDA source; otherwise it compiles it at once (tvm_callback_cuda_compile).
CODEGEN_KEEPS_SOURCE = (
    tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None
    or os.environ.get("TVM_COMPILE_FORCE_FALLBACK", "0") not in ("", "0")
)


@T.prim_func(s_tir=True)
def vector_add(
    A: T.Buffer((N,), "float32"), B: T.Buffer((N,), "float32"), C: T.Buffer((N,), "float32")
):
    T.func_attr({"global_symbol": "add", "tirx.noalias": True})
    for i in range(N):
        with T.sblock("C"):
            vi = T.axis.spatial(N, i)
            C[vi] = A[vi] + B[vi]


def cuda_vector_add():
    """``vector_add`` bound to blockIdx.x/threadIdx.x (128 threads per block)."""
    sch = Schedule(vector_add)
    (loop,) = sch.get_loops(sch.get_sblock("C"))
    outer, inner = sch.split(loop, [None, 128])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")
    return sch.mod


def fatbin_entries(data: bytes) -> list[tuple[str, int]]:
    """``(kind, sm)`` of each fatbin entry ("elf" = SASS, "ptx"): ``cuobjdump -lelf -lptx``."""
    magic, _version, header_size, body_size = struct.unpack_from("<IHHQ", data, 0)
    assert magic == 0xBA55ED50
    entries, offset = [], header_size
    while offset < header_size + body_size:
        kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, offset)
        (sm,) = struct.unpack_from("<I", data, offset + 28)
        entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
        offset += entry_header + entry_size
    return entries


@pytest.fixture(scope="module")
def cuda_builds():
    """The CUDA vector add built for sm_90 and sm_80 (nvcc, fatbin)."""
    if not HAS_NVCC:
        pytest.skip("nvcc is not on PATH")
    mod = cuda_vector_add()
    return {arch: build_module(mod, cuda_target(arch)) for arch in ("sm_90", "sm_80")}


@pytest.fixture(scope="module")
def llvm_build():
    return build_module(vector_add, {"kind": "llvm"})


def run_fresh(script: str, *args: str, timeout: int = 120) -> dict:
    """Run ``script`` in a fresh interpreter (repo on the path); it prints one JSON line last."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Loads libraries with lowbit_tvm.codegen.load_library and never imports the tvm package.
# Where TVM's CUDA runtime cannot load (no NVIDIA driver), it first records load_library's error,
# then registers a stand-in for the loader "ffi.Module.load_from_bytes.cuda" that records exactly
# the bytes the real loader would receive, so the CUDA library can still be opened and its
# function handle taken.
FRESH_LOADER = """
    import json, struct, sys
    import numpy as np
    from lowbit_tvm.codegen import load_library
    from lowbit_tvm.errors import LibraryError
    import tvm_ffi

    cuda_path, llvm_path = sys.argv[1], sys.argv[2]
    out = {"cuda_runtime": True}
    try:
        cuda_mod = load_library(cuda_path)
    except LibraryError as err:
        out["cuda_runtime"] = False
        out["first_error"] = str(err)
        seen = out["payload"] = {}

        def stand_in(payload):
            payload = bytes(payload)
            (n,) = struct.unpack_from("<Q", payload, 0)
            seen["fmt"] = payload[8 : 8 + n].decode()
            seen["code"] = payload.hex()
            return tvm_ffi.system_lib()

        tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda", stand_in)
        cuda_mod = load_library(cuda_path)
    out["cuda_kind"] = cuda_mod.kind
    out["cuda_has_add"] = cuda_mod.implements_function("add")
    out["cuda_handle"] = type(cuda_mod["add"]).__name__

    llvm_mod = load_library(llvm_path)
    a = np.arange(1024, dtype="float32")
    b = np.full(1024, 0.5, dtype="float32")
    c = np.zeros(1024, dtype="float32")
    llvm_mod["add"](tvm_ffi.from_dlpack(a), tvm_ffi.from_dlpack(b), tvm_ffi.from_dlpack(c))
    out["llvm_max_err"] = float(np.abs(c - (a + b)).max())

    out["tvm_imported"] = "tvm" in sys.modules
    out["nvcc_imported"] = "tvm.support.nvcc" in sys.modules
    jit = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    out["jit_callback"] = jit is not None
    print(json.dumps(out))
"""


# ---------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------
def test_cuda_target_is_dict_with_llvm_host():
    tgt = cuda_target("sm_90")
    assert isinstance(tgt, Target)
    assert tgt.kind.name == "cuda"
    assert str(tgt.attrs["arch"]) == "sm_90"
    assert int(tgt.attrs["max_threads_per_block"]) == 1024
    assert int(tgt.attrs["max_shared_memory_per_block"]) == 49152
    assert int(tgt.attrs["thread_warp_size"]) == 32
    assert int(tgt.attrs["registers_per_block"]) == 65536
    assert tgt.host is not None and tgt.host.kind.name == "llvm"
    assert arch_of(tgt) == "sm_90"
    assert arch_of(cuda_target("sm_90a")) == "sm_90a"
    big = cuda_target("sm_90", max_shared_memory_per_block=232448)
    assert int(big.attrs["max_shared_memory_per_block"]) == 232448
    assert arch_of({"kind": "cuda", "arch": "sm_80"}) == "sm_80"


def test_cuda_target_errors():
    for bad in ("90", "sm_9", "compute_90", "sm90", ""):
        with pytest.raises(CodegenError, match="invalid CUDA arch"):
            cuda_target(bad)
    with pytest.raises(CodegenError, match="foo"):
        cuda_target("sm_90", foo=1)
    with pytest.raises(CodegenError, match="CUDA target"):
        arch_of({"kind": "llvm"})
    assert issubclass(CodegenError, LowbitError)


def test_detect_cuda_arch_matches_device():
    arch = detect_cuda_arch()
    if HAS_GPU:
        major, minor = tvm.cuda(0).compute_version.split(".")
        assert arch == f"sm_{major}{minor}"
    else:
        assert arch is None


# ---------------------------------------------------------------------------------------------
# builds
# ---------------------------------------------------------------------------------------------
@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_cuda_build_carries_fatbin(cuda_builds, arch):
    built = cuda_builds[arch]
    assert isinstance(built, CompiledModule)
    assert isinstance(built, tvm.runtime.Executable)
    assert built.arch == arch and built.functions == ("add",)
    assert device_code_format(built) == "fatbin"
    (code,) = device_code(built)
    assert code.kind == "cuda" and code.format == "fatbin"
    assert code.data.startswith(FATBIN_MAGIC)
    assert code.kernels == ("add_kernel",)
    sm = int(arch[3:])
    entries = fatbin_entries(code.data)
    assert ("elf", sm) in entries  # SASS for the requested arch
    assert ("ptx", sm) in entries  # plus PTX, for forward compatibility
    assert built.metadata()["device_code_format"] == "fatbin"
    # Where codegen kept CUDA source, build_module compiled it and rewrites it at export time.
    assert bool(built._replacements) == CODEGEN_KEEPS_SOURCE  # pylint: disable=protected-access


@needs_nvcc
def test_build_without_binary_keeps_what_tvm_makes():
    built = build_module(cuda_vector_add(), cuda_target("sm_90"), binary=False)
    fmt = device_code_format(built)
    if CODEGEN_KEEPS_SOURCE:
        assert fmt == "cu"  # TVM's fallback module keeps the source
    else:
        assert fmt in ("cubin", "fatbin", "ptx")


@needs_nvcc
def test_compile_callback_is_overridden_then_restored():
    before = tvm.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    source = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = 1.0f; }'
    with nvcc_compile_callback(cuda_target("sm_80")) as state:
        compiled = bytes(tvm.get_global_func("tvm_callback_cuda_compile")(source))
        assert compiled.startswith(FATBIN_MAGIC)
        assert ("elf", 80) in fatbin_entries(compiled)
        assert state.calls == 1
    after = tvm.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    if before is None:
        assert after is None
    else:
        assert after.same_as(before)


def test_nvcc_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CodegenError, match="nvcc was not found on PATH"):
        build_module(cuda_vector_add(), cuda_target("sm_90"))


@needs_nvcc
def test_nvcc_failure_reports_nvcc_output():
    target = Target({"kind": "cuda", "arch": "sm_10"}, host={"kind": "llvm"})
    with pytest.raises(CodegenError, match="(?s)nvcc failed.*sm_10.*Unsupported gpu architecture"):
        build_module(cuda_vector_add(), target)


def test_llvm_build_runs(llvm_build):
    assert llvm_build.arch is None
    assert device_code_format(llvm_build) == "none"
    a = np.random.default_rng(0).standard_normal(N).astype("float32")
    b = np.random.default_rng(1).standard_normal(N).astype("float32")
    c = tvm.runtime.tensor(np.zeros(N, "float32"))
    llvm_build["add"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a + b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# libraries
# ---------------------------------------------------------------------------------------------
@needs_nvcc
def test_export_and_load_in_fresh_process(cuda_builds, llvm_build, tmp_path):
    cuda_path = export_library(cuda_builds["sm_90"], tmp_path / "add_sm90.so")
    llvm_path = export_library(llvm_build, tmp_path / "sub" / "add_cpu.so")
    assert cuda_path == (tmp_path / "add_sm90.so").absolute() and cuda_path.is_file()
    assert llvm_path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["add_sm90.so", "add_sm90.so.json", "sub"]

    meta = json.loads(sidecar_path(cuda_path).read_text())
    assert meta["tvm_version"] == TVM_VERSION
    assert meta["arch"] == "sm_90"
    assert meta["functions"] == ["add"]
    assert meta["device_code_format"] == "fatbin"
    assert meta["created"]
    assert read_sidecar(llvm_path)["arch"] is None

    out = run_fresh(FRESH_LOADER, str(cuda_path), str(llvm_path))
    assert out["tvm_imported"] is False
    assert out["nvcc_imported"] is False
    assert out["jit_callback"] is False  # nothing could compile CUDA source in that process
    assert out["cuda_kind"] == "library" and out["cuda_has_add"]
    assert out["cuda_handle"] == "Function"
    assert out["llvm_max_err"] == 0.0
    if not out["cuda_runtime"]:
        assert "CUDA runtime is not available" in out["first_error"]
        # The bytes the real loader gets: a fatbin with sm_90 SASS, not CUDA source.
        payload = bytes.fromhex(out["payload"]["code"])
        assert out["payload"]["fmt"] == "fatbin"
        start = payload.find(FATBIN_MAGIC)
        assert start > 0
        assert ("elf", 90) in fatbin_entries(payload[start:])
        assert b"__global__" not in payload


@needs_nvcc
def test_overwrite_is_refused(cuda_builds, tmp_path):
    path = export_library(cuda_builds["sm_80"], tmp_path / "lib.so")
    original = path.read_bytes()
    with pytest.raises(LibraryError, match="refusing to overwrite"):
        export_library(cuda_builds["sm_90"], path)
    assert path.read_bytes() == original
    assert read_sidecar(path)["arch"] == "sm_80"
    export_library(cuda_builds["sm_90"], path, overwrite=True)
    assert read_sidecar(path)["arch"] == "sm_90"
    assert path.read_bytes() != original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.so", "lib.so.json"]  # no temp files


def test_export_errors(llvm_build, tmp_path):
    with pytest.raises(LibraryError, match=r"must end with '\.so'"):
        export_library(llvm_build, tmp_path / "lib.tar")
    with pytest.raises(LibraryError, match="takes what build_module"):
        export_library(object(), tmp_path / "lib.so")
    assert list(tmp_path.iterdir()) == []


@needs_nvcc
def test_export_refuses_cuda_source(tmp_path):
    if not CODEGEN_KEEPS_SOURCE:
        pytest.skip("with TVM's CUDA runtime loaded, codegen always compiles the device code")
    source_build = build_module(cuda_vector_add(), cuda_target("sm_90"), binary=False)
    with pytest.raises(LibraryError, match="CUDA source"):
        export_library(source_build, tmp_path / "lib.so")
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path):
    with pytest.raises(LibraryError, match="does not exist"):
        load_library(tmp_path / "missing.so")
    text = tmp_path / "text.so"
    text.write_text("not a library\n")
    with pytest.raises(LibraryError, match="not a TVM library"):
        load_library(text)
    elf = Path(sys.executable).resolve()  # an ELF file without TVM symbols
    if elf.read_bytes()[:4] == b"\x7fELF":
        with pytest.raises(LibraryError, match="not a TVM library"):
            load_library(elf)
    with pytest.raises(LibraryError, match="not a regular file"):
        load_library(tmp_path)


def test_llvm_library_loads_and_runs_in_process(llvm_build, tmp_path):
    path = export_library(llvm_build, tmp_path / "add.so")
    mod = load_library(path)
    a = np.arange(N, dtype="float32")
    c = tvm.runtime.tensor(np.zeros(N, "float32"))
    mod["add"](tvm.runtime.tensor(a), tvm.runtime.tensor(a), c)
    np.testing.assert_array_equal(c.numpy(), 2 * a)


def test_tvm_version_mismatch(llvm_build, tmp_path):
    path = export_library(llvm_build, tmp_path / "add.so")
    meta = read_sidecar(path)
    meta["tvm_version"] = "0.1.0"
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(LibraryMismatchError, match=rf"TVM 0\.1\.0.*TVM {TVM_VERSION}"):
        load_library(path)


@needs_nvcc
def test_arch_mismatch(cuda_builds, tmp_path, monkeypatch):
    path = export_library(cuda_builds["sm_90"], tmp_path / "add.so")
    monkeypatch.setattr(library_mod, "_local_cuda_arch", lambda: "sm_80")
    with pytest.raises(LibraryMismatchError, match="built for sm_90 but the local GPU is sm_80"):
        load_library(path)


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
GPU_RUNNER = """
    import json, sys
    import numpy as np
    from lowbit_tvm.codegen import load_library
    import tvm_ffi

    mod = load_library(sys.argv[1])
    n = 1024
    a = np.random.default_rng(0).standard_normal(n).astype("float32")
    b = np.random.default_rng(1).standard_normal(n).astype("float32")
    try:
        import torch
        assert torch.cuda.is_available()
        ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
        tc = torch.zeros(n, device="cuda")
        mod["add"](tvm_ffi.from_dlpack(ta), tvm_ffi.from_dlpack(tb), tvm_ffi.from_dlpack(tc))
        torch.cuda.synchronize()
        c = tc.cpu().numpy()
        via = "torch"
    except (ImportError, AssertionError):
        import tvm  # no CUDA torch: TVM's own tensors (this imports tvm.support.nvcc)
        tvm_ffi.registry.remove_global_func("tvm_callback_cuda_compile")
        dev = tvm.cuda(0)
        tc = tvm.runtime.tensor(np.zeros(n, "float32"), dev)
        mod["add"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), tc)
        c = tc.numpy()
        via = "tvm"
    jit = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    out = {"max_err": float(np.abs(c - (a + b)).max()), "via": via, "jit_callback": jit is not None}
    print(json.dumps(out))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (tvm.cuda(0).exist is False)")
@pytest.mark.skipif(not HAS_NVCC, reason="nvcc is not on PATH")
def test_gpu_exported_vector_add_runs_in_fresh_process(tmp_path):
    arch = detect_cuda_arch()
    built = build_module(cuda_vector_add(), cuda_target(arch))
    assert device_code_format(built) in ("fatbin", "cubin")
    path = export_library(built, tmp_path / "add_gpu.so")
    out = run_fresh(GPU_RUNNER, str(path))
    assert out["jit_callback"] is False
    assert out["max_err"] <= 1e-6
