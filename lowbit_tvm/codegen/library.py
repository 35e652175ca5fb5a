"""Write compiled modules to shared libraries and load them back.

:func:`load_library` needs only TVM's *runtime*: it does not import the ``tvm`` Python package
(which pulls in the compiler and registers ``tvm.support.nvcc``'s JIT callback). It loads
``libtvm_runtime.so`` (and ``libtvm_runtime_cuda.so`` where an NVIDIA driver exists) from the
installed ``tvm`` package through ``tvm_ffi``, so a deployment process can load a library built
elsewhere without the compiler stack, and a library that still needed CUDA compilation at load
time would fail there instead of silently invoking a compiler.

Each library ``lib.so`` comes with a sidecar ``lib.so.json`` holding ``tvm_version``, ``arch``,
``functions`` and ``created`` (plus ``target_kind`` and ``device_code_format``);
:func:`load_library` uses it to refuse libraries built for another GPU arch or TVM version.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import mmap
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import LibraryError, LibraryMismatchError

__all__ = ["SIDECAR_SUFFIX", "export_library", "load_library", "read_sidecar", "sidecar_path"]

SIDECAR_SUFFIX = ".json"
_SIDECAR_SCHEMA = 1
_ELF_MAGIC = b"\x7fELF"
_TVM_SYMBOL_MARK = b"__tvm_ffi_"
_KDL_CUDA = 2  # DLDeviceType kDLCUDA
_ATTR_EXIST, _ATTR_COMPUTE_VERSION = 0, 4  # runtime.GetDeviceAttr kinds (tvm.runtime.Device)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar JSON of a library: ``<path>.json``.

    Parameters
    ----------
    path : str or os.PathLike
        The library path.

    Returns
    -------
    Path
        ``<path>.json``.
    """
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read the sidecar of a library.

    Parameters
    ----------
    path : str or os.PathLike
        The library path (not the sidecar's).

    Returns
    -------
    dict or None
        The sidecar's contents, None if there is no sidecar.

    Raises
    ------
    LibraryError
        If the sidecar exists but is not valid JSON object.
    """
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LibraryError(f"unreadable library sidecar {side}: {err}") from None
    if not isinstance(meta, dict):
        raise LibraryError(f"library sidecar {side} does not hold a JSON object")
    return meta


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def export_library(module: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a built module to a shared library plus its sidecar ``<path>.json``.

    The library is written to a temporary file in the same directory and renamed into place, so a
    failed export leaves neither a partial library nor a changed existing one.

    Parameters
    ----------
    module : CompiledModule or tvm.runtime.Executable or tvm.runtime.Module
        What :func:`lowbit_tvm.codegen.build_module` returned (other TVM modules are accepted when
        their device code is already compiled).
    path : str or os.PathLike
        Output path; must end with ``.so``. Missing parent directories are created.
    overwrite : bool
        Replace an existing file at ``path`` (and its sidecar).

    Returns
    -------
    Path
        The absolute path of the written library.

    Raises
    ------
    LibraryError
        If ``path`` exists and ``overwrite`` is False, does not end with ``.so``, the module carries
        CUDA source instead of compiled device code, or TVM fails to export.
    """
    from ..tvm_api import TVM_VERSION, tvm  # pylint: disable=import-outside-toplevel
    from .build import CompiledModule, device_code_format  # pylint: disable=import-outside-toplevel

    path = Path(path).expanduser().absolute()
    if path.suffix != ".so":
        raise LibraryError(f"library path must end with '.so', got {path}")
    if path.is_dir():
        raise LibraryError(f"cannot export library to {path}: it is a directory")
    if path.exists() and not overwrite:
        raise LibraryError(
            f"refusing to overwrite existing file {path}; pass overwrite=True to replace it"
        )
    if not isinstance(module, CompiledModule | tvm.runtime.Executable | tvm.runtime.Module):
        raise LibraryError(
            f"export_library() takes what build_module() returns, got {type(module).__name__}"
        )

    if isinstance(module, CompiledModule):
        meta = module.metadata()
    else:
        meta = {"target_kind": None, "target": None, "arch": None, "functions": [],
                "device_code_format": device_code_format(module)}
    if meta["device_code_format"] == "cu" or "cu" in meta["device_code_format"].split("+"):
        raise LibraryError(
            "the module carries CUDA source, not compiled device code, so every process loading "
            "the library would need a CUDA compiler; build it with "
            "lowbit_tvm.codegen.build_module(..., binary=True)"
        )
    meta = {
        "schema": _SIDECAR_SCHEMA,
        "tvm_version": TVM_VERSION,
        "arch": meta["arch"],
        "functions": meta["functions"],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target_kind": meta["target_kind"],
        "target": meta["target"],
        "device_code_format": meta["device_code_format"],
    }

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_lib = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.so", dir=path.parent)
    os.close(fd)
    tmp_side = Path(tmp_lib + SIDECAR_SUFFIX)
    try:
        try:
            module.export_library(tmp_lib)
        except Exception as err:
            raise LibraryError(f"TVM failed to export the library to {path}: {err}") from err
        if not Path(tmp_lib).is_file() or Path(tmp_lib).stat().st_size == 0:
            raise LibraryError(f"TVM wrote no library for {path}")
        tmp_side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp_lib, 0o755)
        os.replace(tmp_lib, path)
        os.replace(tmp_side, sidecar_path(path))
    finally:
        for leftover in (Path(tmp_lib), tmp_side):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return path


# --------------------------------------------------------------------------------------------
# runtime-only loading
# --------------------------------------------------------------------------------------------
_RUNTIME: dict[str, Any] = {}


def _tvm_lib_dirs() -> list[Path]:
    spec = importlib.util.find_spec("tvm")  # locates the package without running tvm/__init__.py
    if spec is None or not spec.submodule_search_locations:
        raise LibraryError("the apache-tvm package is not installed; it provides libtvm_runtime")
    root = Path(next(iter(spec.submodule_search_locations)))
    return [d for d in (root / "lib", root / "lib64", root) if d.is_dir()]


def _ensure_runtime() -> Any:
    """Load tvm_ffi and TVM's runtime libraries once; return the ``tvm_ffi`` module."""
    if "tvm_ffi" in _RUNTIME:
        return _RUNTIME["tvm_ffi"]
    import tvm_ffi  # pylint: disable=import-outside-toplevel
    from tvm_ffi.libinfo import load_lib_ctypes  # pylint: disable=import-outside-toplevel

    if "tvm" in sys.modules:  # the full TVM package already loaded its runtime libraries
        has_cuda = tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True)
        _RUNTIME["cuda_error"] = (
            None if has_cuda else "libtvm_runtime_cuda is not loaded; no NVIDIA driver?"
        )
    else:
        dirs = _tvm_lib_dirs()
        try:
            runtime = load_lib_ctypes("tvm", "tvm_runtime", "RTLD_GLOBAL", extra_lib_paths=dirs)
        except (OSError, RuntimeError) as err:
            raise LibraryError(f"cannot load TVM's runtime library libtvm_runtime: {err}") from None
        try:  # needs libcuda.so.1 (the NVIDIA driver); optional
            cuda = load_lib_ctypes("tvm", "tvm_runtime_cuda", "RTLD_LOCAL", extra_lib_paths=dirs)
            _RUNTIME["libs"] = [runtime, cuda]
            _RUNTIME["cuda_error"] = None
        except (OSError, RuntimeError) as err:
            _RUNTIME["libs"] = [runtime]
            _RUNTIME["cuda_error"] = str(err).splitlines()[0]
    _RUNTIME["tvm_ffi"] = tvm_ffi
    return tvm_ffi


def _local_tvm_version() -> str:
    if "tvm" in sys.modules and hasattr(sys.modules["tvm"], "__version__"):
        return str(sys.modules["tvm"].__version__)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version("apache-tvm")
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        version_file = Path(next(iter(spec.submodule_search_locations))) / "_version.py"
        if version_file.is_file():
            vspec = importlib.util.spec_from_file_location("_lowbit_tvm_version", version_file)
            module = importlib.util.module_from_spec(vspec)
            with contextlib.suppress(Exception):
                vspec.loader.exec_module(module)
                return str(module.version)
    return "unknown"


def _local_cuda_arch() -> str | None:
    """The arch of local GPU 0 through the TVM runtime (same query as ``tvm.cuda(0)``)."""
    tvm_ffi = _ensure_runtime()
    get_attr = tvm_ffi.get_global_func("runtime.GetDeviceAttr", allow_missing=True)
    if get_attr is None:
        return None
    try:
        if not get_attr(_KDL_CUDA, 0, _ATTR_EXIST):
            return None
        version = str(get_attr(_KDL_CUDA, 0, _ATTR_COMPUTE_VERSION))
    except Exception:  # no CUDA device API or driver
        return None
    major, _, minor = version.partition(".")
    return f"sm_{major}{minor[:1] or '0'}" if major.isdigit() else None


def _base_arch(arch: str) -> str:
    return arch.rstrip("abcdefghijklmnopqrstuvwxyz")


def _looks_like_tvm_library(path: Path) -> bool:
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mem:
        return mem.find(_TVM_SYMBOL_MARK) >= 0


def load_library(path: str | os.PathLike) -> Any:
    """Load a library written by :func:`export_library`.

    Only TVM's runtime is needed (the ``tvm`` Python package is not imported; see the module
    docstring). CUDA device code must already be compiled: nothing is compiled at load time.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.so`` file.

    Returns
    -------
    tvm_ffi.Module
        The runtime module; ``mod["name"]`` / ``mod.get_function(name)`` return its functions
        (the sidecar's ``functions`` lists them).

    Raises
    ------
    LibraryError
        If the file is missing, is not a TVM library, or holds CUDA code while TVM's CUDA runtime
        cannot be loaded here (no NVIDIA driver).
    LibraryMismatchError
        If the sidecar says the library was built with another TVM version, or for another GPU arch
        than the local GPU's (checked when a GPU is present).
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise LibraryError(f"no library at {path}: the file does not exist")
    if not path.is_file():
        raise LibraryError(f"cannot load {path}: not a regular file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != _ELF_MAGIC:
        raise LibraryError(f"{path} is not a TVM library (not an ELF shared object)")
    if not _looks_like_tvm_library(path):
        raise LibraryError(f"{path} is not a TVM library (no TVM symbols in it)")
    meta = read_sidecar(path)

    tvm_ffi = _ensure_runtime()
    if meta is not None:
        built_with, local = meta.get("tvm_version"), _local_tvm_version()
        if built_with and built_with != local:
            raise LibraryMismatchError(
                f"{path} was built with TVM {built_with} but this process has TVM {local}; "
                "rebuild the library with this TVM version"
            )
        built_for = meta.get("arch")
        if built_for:
            local_arch = _local_cuda_arch()
            if local_arch is not None and _base_arch(str(built_for)) != local_arch:
                raise LibraryMismatchError(
                    f"{path} was built for {built_for} but the local GPU is {local_arch}; rebuild "
                    f"it with cuda_target(arch={local_arch!r})"
                )

    try:
        module = tvm_ffi.load_module(str(path))
    except Exception as err:  # tvm_ffi raises RuntimeError/ValueError subclasses
        message = str(err)
        if "load_from_bytes.cuda" in message:
            reason = _RUNTIME.get("cuda_error") or "no ffi.Module.load_from_bytes.cuda loader"
            raise LibraryError(
                f"{path} contains CUDA device code but TVM's CUDA runtime is not available in this "
                f"process ({reason}); load it on a machine with an NVIDIA driver"
            ) from None
        last = message.strip().splitlines()[-1] if message.strip() else type(err).__name__
        raise LibraryError(f"{path} could not be loaded as a TVM library: {last}") from None

    if meta is not None:
        names = meta.get("functions") or []
        missing = [name for name in names if not module.implements_function(name)]
        if missing:
            raise LibraryError(f"{path} does not define the functions its sidecar lists: {missing}")
    return module
