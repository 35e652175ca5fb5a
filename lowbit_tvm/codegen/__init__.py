"""Code generation: CUDA targets, builds with compiled (fatbin) device code, deployable libraries.

``export_library``/``load_library`` are imported eagerly (loading needs only TVM's runtime, not the
``tvm`` Python package); the names from ``target`` and ``build`` import TVM on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .library import export_library, load_library, read_sidecar, sidecar_path

if TYPE_CHECKING:  # pragma: no cover
    from .build import (
        CompiledModule,
        DeviceCode,
        build_module,
        compile_cuda_source,
        device_code,
        device_code_format,
        nvcc_compile_callback,
    )
    from .target import CUDA_TARGET_DEFAULTS, arch_of, as_target, cuda_target, detect_cuda_arch

_LAZY = {
    "CUDA_TARGET_DEFAULTS": "target",
    "arch_of": "target",
    "as_target": "target",
    "cuda_target": "target",
    "detect_cuda_arch": "target",
    "CompiledModule": "build",
    "DeviceCode": "build",
    "build_module": "build",
    "compile_cuda_source": "build",
    "device_code": "build",
    "device_code_format": "build",
    "nvcc_compile_callback": "build",
}

__all__ = sorted([*_LAZY, "export_library", "load_library", "read_sidecar", "sidecar_path"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
