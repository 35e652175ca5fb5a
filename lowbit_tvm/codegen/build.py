"""Build TensorIR into a TVM module whose CUDA device code is compiled (fatbin), not CUDA source.

How TVM 0.27 makes the CUDA device module (``src/backend/cuda/codegen/codegen_cuda.cc``,
``cuda_fallback_module.h``): codegen produces CUDA C++ source and hands it to
``ffi.Module.create.cuda``. That factory lives in ``libtvm_runtime_cuda.so``, which only loads where
``libcuda.so.1`` (the NVIDIA driver) exists:

* with a driver, the factory compiles the source at once through the Python callback
  ``tvm_callback_cuda_compile`` (``tvm.support.nvcc``; NVRTC by default) and keeps the binary;
* without one (a CPU-only build machine) codegen falls back to ``CUDAFallbackModuleNode``, which
  keeps the *source* (format ``"cuda"``); a library exported from it makes every process that loads
  it compile the kernels again through ``tvm_callback_cuda_compile``.

:func:`build_module` handles both: during ``tvm.compile`` it overrides ``tvm_callback_cuda_compile``
with nvcc for the target's arch (fatbin), and any CUDA module that still carries source afterwards
(the fallback) is compiled by the same nvcc call; its serialized form (``[fmt][fmap][code]``, the
layout of ``CUDAModuleNode::SaveToBytes``) is rewritten to ``fmt="fatbin"`` with the binary as
code when the module is exported. A library written by :func:`lowbit_tvm.codegen.export_library`
therefore loads as a binary CUDA module (``ffi.Module.load_from_bytes.cuda``) with no compiler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from typing import Any

import tvm_ffi

from ..errors import CodegenError
from ..tvm_api import TVM_VERSION, Target, relax, tirx, tvm
from . import pipeline
from .target import arch_of, as_target

__all__ = [
    "CompiledModule",
    "DeviceCode",
    "build_module",
    "compile_cuda_source",
    "device_code",
    "device_code_format",
    "nvcc_compile_callback",
]

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
ELF_MAGIC = b"\x7fELF"
_SOURCE_FORMATS = ("cuda", "cu")
_CALLBACK_NAME = "tvm_callback_cuda_compile"
_NVCC_TAIL_CHARS = 3000


# --------------------------------------------------------------------------------------------
# TVM's byte streams (src/support/bytes_io.h): little-endian u64 sizes, strings as size + bytes.
# --------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes, offset: int = 0):
        self.data = data
        self.pos = offset

    def u64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise ValueError("truncated stream")
        (value,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return value

    def raw(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ValueError("truncated stream")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def blob(self) -> bytes:
        return self.raw(self.u64())

    def u64_vector(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _blob(data: bytes) -> bytes:
    return _u64(len(data)) + data


def _skip_function_info_map(reader: _Reader) -> list[str]:
    """Skip a serialized ``Map<String, FunctionInfo>`` (runtime/metadata.h); return its keys."""
    names = []
    for _ in range(reader.u64()):
        names.append(reader.blob().decode())  # key
        reader.blob()  # FunctionInfo.name
        reader.raw(4 * reader.u64())  # arg_types: DLDataType, 4 bytes each
        for _ in range(reader.u64()):  # launch_param_tags
            reader.blob()
        reader.raw(4 * reader.u64())  # arg_extra_tags: enum : int
    return names


@dataclasses.dataclass(frozen=True)
class _CudaPayload:
    """A parsed ``CUDAModuleNode::SaveToBytes`` payload: ``[fmt][fmap][code]``."""

    fmt: str
    fmap: bytes  # the serialized function-info map, kept verbatim
    code: bytes
    kernels: tuple[str, ...]

    @classmethod
    def parse(cls, payload: bytes) -> _CudaPayload:
        reader = _Reader(payload)
        try:
            fmt = reader.blob().decode()
            start = reader.pos
            kernels = _skip_function_info_map(reader)
            fmap = payload[start : reader.pos]
            code = reader.blob()
            ok = reader.at_end()
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise CodegenError(
                f"unrecognized CUDA module serialization in TVM {TVM_VERSION}; "
                "lowbit_tvm.codegen.build expects [fmt][Map<String, FunctionInfo>][code]"
            )
        return cls(fmt, fmap, code, tuple(kernels))

    def with_code(self, fmt: str, code: bytes) -> _CudaPayload:
        return dataclasses.replace(self, fmt=fmt, code=code)

    def serialize(self) -> bytes:
        return _blob(self.fmt.encode()) + self.fmap + _blob(self.code)


def _code_format(fmt: str, code: bytes) -> str:
    """The real format of CUDA module code (TVM tags nvcc fatbins as ``"cubin"``)."""
    if code.startswith(FATBIN_MAGIC):
        return "fatbin"
    if code.startswith(ELF_MAGIC):
        return "cubin"
    if fmt in _SOURCE_FORMATS:
        return "cu"
    return fmt


def _pack_imports(module: Any) -> bytes:
    """``PackImportsToBytes`` of ``module``: 8-byte size header + serialized import tree."""
    tensor = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(module)
    return tensor.numpy().tobytes()


def _parse_import_blob(blob: bytes) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    """Split a packed import blob into its import-tree prefix and ``(kind, payload)`` entries.

    ``"_lib"`` entries (the DSO placeholder) have payload None.
    """
    reader = _Reader(blob)
    nbytes = reader.u64()
    if nbytes != len(blob) - 8:
        raise CodegenError("corrupt TVM import blob (size header mismatch)")
    row_ptr = reader.u64_vector()
    reader.u64_vector()  # child indices
    tree_prefix = blob[8 : reader.pos]
    entries: list[tuple[str, bytes | None]] = []
    for _ in range(max(len(row_ptr) - 1, 0)):
        if reader.at_end():  # a module that is neither DSO-exportable nor serializable
            break
        kind = reader.blob().decode()
        entries.append((kind, None if kind == "_lib" else reader.blob()))
    return tree_prefix, entries


def _serialize_import_blob(tree_prefix: bytes, entries: list[tuple[str, bytes | None]]) -> bytes:
    body = bytearray(tree_prefix)
    for kind, payload in entries:
        body += _blob(kind.encode())
        if payload is not None:
            body += _blob(payload)
    return _u64(len(body)) + bytes(body)


def _import_tree(module: Any) -> Iterator[Any]:
    """Every module imported by ``module``, directly or not (a Relax VM executable imports the host
    module, which imports the CUDA module)."""
    for imported in module.imports:
        yield imported
        yield from _import_tree(imported)


def _module_payload(module: Any) -> tuple[str, bytes] | None:
    """``(kind, SaveToBytes())`` of one runtime module, or None if it is not binary serializable."""
    try:
        _, entries = _parse_import_blob(_pack_imports(module))
    except Exception:  # not serializable at all
        return None
    if not entries or entries[0][1] is None:
        return None
    return entries[0][0], entries[0][1]


# --------------------------------------------------------------------------------------------
# nvcc
# --------------------------------------------------------------------------------------------
def _require_nvcc() -> None:
    if shutil.which("nvcc") is None:
        raise CodegenError(
            "nvcc was not found on PATH; install the CUDA toolkit (or add its bin/ to PATH) to "
            "compile CUDA device code, or build with binary=False to keep CUDA source"
        )


def compile_cuda_source(source: str, target: Any, *, target_format: str = "fatbin") -> bytes:
    """Compile CUDA C++ source with nvcc for the arch of ``target``.

    Parameters
    ----------
    source : str
        CUDA source, as produced by TVM's CUDA codegen.
    target : Target or dict
        A CUDA target; its ``arch`` selects the GPU (``-arch sm_90`` gives SASS for sm_90 plus
        compute_90 PTX in a fatbin).
    target_format : {"fatbin", "cubin"}
        Output format.

    Returns
    -------
    bytes
        The compiled device code.

    Raises
    ------
    CodegenError
        If nvcc is not on ``PATH`` or fails; the message ends with the tail of nvcc's output.
    """
    if target_format not in ("fatbin", "cubin"):
        raise CodegenError(f"target_format must be 'fatbin' or 'cubin', got {target_format!r}")
    tgt = as_target(target)
    arch = arch_of(tgt)
    _require_nvcc()
    try:
        with tgt:  # tvm.support.nvcc reads Target.current() for the compute version
            data = tvm.support.nvcc.compile_cuda(
                source, target_format=target_format, arch=arch, compiler="nvcc"
            )
    except RuntimeError as err:
        # compile_cuda's message is "<whole source>\nCompilation error:\n<nvcc output>".
        text = str(err)
        tail = text.rsplit("Compilation error:", 1)[-1].strip()[-_NVCC_TAIL_CHARS:]
        raise CodegenError(f"nvcc failed to compile CUDA code for {arch}:\n{tail}") from None
    except OSError as err:
        raise CodegenError(f"could not run nvcc for {arch}: {err}") from None
    data = bytes(data)
    expected = FATBIN_MAGIC if target_format == "fatbin" else ELF_MAGIC
    if not data.startswith(expected):
        raise CodegenError(f"nvcc produced no {target_format} for {arch} ({len(data)} bytes)")
    return data


_CALLBACK_LOCK = threading.RLock()


@dataclasses.dataclass
class _CallbackState:
    calls: int = 0
    error: BaseException | None = None


@contextlib.contextmanager
def nvcc_compile_callback(target: Any) -> Iterator[_CallbackState]:
    """Temporarily make ``tvm_callback_cuda_compile`` compile with nvcc to a fatbin for ``target``.

    TVM calls this callback from ``ffi.Module.create.cuda`` when its CUDA runtime is loaded (a
    machine with an NVIDIA driver). The previous callback (``tvm.support.nvcc``'s, which uses NVRTC)
    is restored on exit.

    Parameters
    ----------
    target : Target or dict
        The CUDA target whose arch is compiled for.

    Yields
    ------
    state
        ``state.calls`` counts the compilations, ``state.error`` holds the :class:`CodegenError` of
        a failed one (TVM wraps exceptions raised inside callbacks).
    """
    tgt = as_target(target)
    state = _CallbackState()

    def _compile(code: Any, *_unused: Any) -> bytes:
        state.calls += 1
        try:
            return compile_cuda_source(str(code), tgt)
        except CodegenError as err:
            state.error = err
            raise

    with _CALLBACK_LOCK:
        previous = tvm_ffi.get_global_func(_CALLBACK_NAME, allow_missing=True)
        tvm_ffi.register_global_func(_CALLBACK_NAME, _compile, override=True)
        try:
            yield state
        finally:
            if previous is not None:
                tvm_ffi.register_global_func(_CALLBACK_NAME, previous, override=True)
            else:
                tvm_ffi.registry.remove_global_func(_CALLBACK_NAME)


# --------------------------------------------------------------------------------------------
# The built module
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeviceCode:
    """Device code carried by one imported module.

    Attributes
    ----------
    kind : str
        Runtime module kind, e.g. ``"cuda"``.
    format : str
        ``"fatbin"``, ``"cubin"``, ``"ptx"`` or ``"cu"`` (CUDA source).
    data : bytes
        The code itself.
    kernels : tuple of str
        Kernel names in the module's function table.
    """

    kind: str
    format: str
    data: bytes
    kernels: tuple[str, ...]


class CompiledModule(tvm.runtime.Executable):
    """A TVM :class:`~tvm.runtime.Executable` whose exported library carries compiled device code.

    Use it like the Executable of ``tvm.compile`` (``ex["add"]``, ``ex.jit()``,
    ``ex.export_library(path)``); prefer :func:`lowbit_tvm.codegen.export_library` for files that
    will be deployed.

    Attributes
    ----------
    mod : tvm.runtime.Module
        The host module (its imports hold the device modules).
    target : Target
        The build target.
    arch : str or None
        The CUDA arch compiled for, None for non-CUDA targets.
    functions : tuple of str
        Names of the host functions (the PrimFuncs' global symbols).
    """

    def __init__(
        self,
        mod: Any,
        *,
        target: Target,
        arch: str | None,
        functions: tuple[str, ...],
        replacements: dict[bytes, bytes] | None = None,
    ):
        super().__init__(mod)
        self.target = target
        self.arch = arch
        self.functions = functions
        # serialized device module (as TVM saves it) -> serialized module with compiled code
        self._replacements = dict(replacements or {})

    def device_code(self) -> list[DeviceCode]:
        """The device code this module exports (after nvcc compilation).

        Returns
        -------
        list of DeviceCode
            One entry per serializable imported module.
        """
        return device_code(self)

    def metadata(self) -> dict[str, Any]:
        """What :func:`lowbit_tvm.codegen.export_library` records in the sidecar JSON."""
        return {
            "target_kind": self.target.kind.name,
            "target": _target_json(self.target),
            "arch": self.arch,
            "functions": list(self.functions),
            "device_code_format": device_code_format(self),
        }

    def _fpack_imports(self, mod: Any, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        tree_prefix, entries = _parse_import_blob(_pack_imports(mod))
        entries = [
            (kind, self._replacements.get(payload, payload) if payload is not None else None)
            for kind, payload in entries
        ]
        blob = _serialize_import_blob(tree_prefix, entries)
        codegen_blob = tvm_ffi.get_global_func("codegen.codegen_blob", allow_missing=True)
        if codegen_blob is not None and mod.kind == "llvm":
            llvm_target = mod.get_function("_get_target_string")()
            obj = codegen_blob(blob, is_system_lib, llvm_target, prefix)
            path = os.path.join(workspace_dir, f"{prefix}devc.o")
            obj.write_to_file(path)
            return path
        path = os.path.join(workspace_dir, f"{prefix}devc.c")
        with open(path, "w", encoding="ascii") as out:
            out.write(_blob_to_c(blob, is_system_lib, prefix))
        return path

    def export_library(
        self, file_name, *, fcompile=None, addons=None, workspace_dir=None, **kwargs
    ):
        """Export like :meth:`tvm.runtime.Executable.export_library`, with compiled device code.

        Parameters
        ----------
        file_name : str or os.PathLike
            Output library (``.so``).
        fcompile, addons, workspace_dir, **kwargs
            As for :meth:`tvm.runtime.Module.export_library`.

        Returns
        -------
        Any
            Whatever ``fcompile`` returns.
        """
        fpack = self._fpack_imports if self._replacements and self.mod.imports else None
        return self.mod.export_library(
            str(file_name),
            fcompile=fcompile,
            fpack_imports=fpack,
            addons=addons,
            workspace_dir=workspace_dir,
            **kwargs,
        )


def _target_json(target: Target) -> Any:
    text = str(target)
    try:
        return json.loads(text)  # TVM 0.27 prints targets as JSON
    except ValueError:
        return text


def _blob_to_c(blob: bytes, is_system_lib: bool, prefix: str) -> str:
    """C source defining the library blob (the layout of TVM's ``PackImportsToC``)."""
    name = prefix + tvm_ffi.get_global_func("runtime.ModuleImportsBlobName")()
    lines = [
        '#ifdef __cplusplus\nextern "C" {\n#endif',
        f"extern const unsigned char {name}[];",
        f"const unsigned char {name}[{len(blob)}] = {{",
    ]
    for start in range(0, len(blob), 20):
        lines.append("  " + "".join(f"0x{b:02x}," for b in blob[start : start + 20]))
    lines.append("};")
    if is_system_lib:
        lines.append("extern int TVMFFIEnvModRegisterSystemLibSymbol(const char*, void*);")
        lines.append(
            f"static int {name}_reg_ = "
            f'TVMFFIEnvModRegisterSystemLibSymbol("{name}", (void*){name});'
        )
    lines.append("#ifdef __cplusplus\n}\n#endif\n")
    return "\n".join(lines)


def _host_module(module: Any) -> Any:
    if isinstance(module, tvm.runtime.Executable):
        return module.mod
    return module


def device_code(module: Any) -> list[DeviceCode]:
    """List the device code carried by a built or loaded module.

    Parameters
    ----------
    module : CompiledModule or tvm.runtime.Executable or tvm.runtime.Module
        What :func:`build_module`, ``tvm.compile`` or :func:`lowbit_tvm.codegen.load_library`
        returned.

    Returns
    -------
    list of DeviceCode
        One entry per binary-serializable imported module (CUDA modules are parsed; other kinds are
        reported with format ``"unknown"``).
    """
    replacements = getattr(module, "_replacements", {})
    result = []
    for imported in _import_tree(_host_module(module)):
        saved = _module_payload(imported)
        if saved is None:
            continue
        kind, payload = saved
        payload = replacements.get(payload, payload)
        if kind != "cuda":
            result.append(DeviceCode(kind, "unknown", payload, ()))
            continue
        parsed = _CudaPayload.parse(payload)
        result.append(
            DeviceCode(kind, _code_format(parsed.fmt, parsed.code), parsed.code, parsed.kernels)
        )
    return result


def device_code_format(module: Any) -> str:
    """The format of the device code a module carries.

    Parameters
    ----------
    module : CompiledModule or tvm.runtime.Executable or tvm.runtime.Module
        A built or loaded module.

    Returns
    -------
    str
        ``"fatbin"``, ``"cubin"``, ``"ptx"`` or ``"cu"`` (CUDA source, which needs a compiler when
        loaded); ``"none"`` when the module has no device code (e.g. an LLVM build); formats joined
        by ``"+"`` when several device modules differ.
    """
    formats = sorted({code.format for code in device_code(module)})
    return "+".join(formats) if formats else "none"


def _function_names(mod_or_func: Any) -> tuple[str, ...]:
    if isinstance(mod_or_func, tirx.PrimFunc):
        symbol = mod_or_func.attrs.get("global_symbol") if mod_or_func.attrs else None
        return (str(symbol) if symbol is not None else "main",)
    if any(isinstance(func, relax.Function) for func in mod_or_func.functions.values()):
        return ("vm_load_executable",)  # a Relax graph: the VM executable's loader
    names = []
    for gvar, func in mod_or_func.functions.items():
        if isinstance(func, tirx.PrimFunc):
            symbol = func.attrs.get("global_symbol") if func.attrs else None
            names.append(str(symbol) if symbol is not None else gvar.name_hint)
    return tuple(sorted(names))


def build_module(mod_or_func: Any, target: Any, *, binary: bool = True) -> CompiledModule:
    """Compile a scheduled TensorIR module for ``target``.

    Parameters
    ----------
    mod_or_func : tvm.IRModule or tirx.PrimFunc
        Scheduled TensorIR (GPU loops bound to ``blockIdx``/``threadIdx`` for CUDA).
    target : Target or dict or str
        A CUDA target from :func:`lowbit_tvm.codegen.cuda_target`, or e.g. ``{"kind": "llvm"}``.
    binary : bool
        For CUDA targets: compile the device code with nvcc to a fatbin for the target's arch. This
        works without a GPU. With False the device module may keep CUDA source (on a machine without
        an NVIDIA driver it does), which needs a compiler wherever the library is loaded.

    Returns
    -------
    CompiledModule
        A :class:`tvm.runtime.Executable` subclass; see :func:`device_code_format`.

    Raises
    ------
    CodegenError
        If the target is invalid, nvcc is missing or fails (the message ends with nvcc's output),
        or TVM fails to lower/build the module.
    """
    tgt = as_target(target)
    is_cuda = tgt.kind.name == "cuda"
    arch = arch_of(tgt) if is_cuda else None
    if isinstance(mod_or_func, tirx.PrimFunc | tvm.IRModule):
        functions = _function_names(mod_or_func)
    else:
        raise CodegenError(
            f"build_module() takes a tvm.IRModule or PrimFunc, got {type(mod_or_func).__name__}"
        )
    compile_binary = is_cuda and binary
    if compile_binary:
        _require_nvcc()
    with nvcc_compile_callback(tgt) if compile_binary else contextlib.nullcontext() as state:
        try:
            executable = tvm.compile(mod_or_func, target=tgt, tir_pipeline=pipeline.register())
        except Exception as err:
            if state is not None and state.error is not None:
                raise state.error from None
            raise CodegenError(f"TVM failed to build for target {tgt}:\n{err}") from err
    replacements: dict[bytes, bytes] = {}
    if compile_binary:
        for imported in _import_tree(executable.mod):
            saved = _module_payload(imported)
            if saved is None or saved[0] != "cuda":
                continue
            parsed = _CudaPayload.parse(saved[1])
            if parsed.fmt in _SOURCE_FORMATS:  # no CUDA runtime here: codegen kept the source
                fatbin = compile_cuda_source(parsed.code.decode(), tgt)
                replacements[saved[1]] = parsed.with_code("fatbin", fatbin).serialize()
    return CompiledModule(
        executable.mod,
        target=tgt,
        arch=arch,
        functions=functions,
        replacements=replacements,
    )
