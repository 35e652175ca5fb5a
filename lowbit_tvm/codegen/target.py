"""CUDA compilation targets.

TVM 0.27 rejects string targets with flags (``"cuda -arch=sm_90"``), so every target here is built
from a dict. The host is always LLVM.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import CodegenError
from ..tvm_api import Target, tvm

__all__ = ["CUDA_TARGET_DEFAULTS", "arch_of", "as_target", "cuda_target", "detect_cuda_arch"]

#: Attributes of the CUDA target dict that :func:`cuda_target` fills in (``arch`` comes on top).
CUDA_TARGET_DEFAULTS: dict[str, Any] = {
    "kind": "cuda",
    "max_threads_per_block": 1024,
    "max_shared_memory_per_block": 49152,
    "thread_warp_size": 32,
    "registers_per_block": 65536,
}

_ARCH_RE = re.compile(r"^sm_(\d{2,3})([a-z]?)$")


def _check_arch(arch: Any) -> str:
    if not isinstance(arch, str) or not _ARCH_RE.match(arch):
        raise CodegenError(
            f"invalid CUDA arch {arch!r}: expected 'sm_<major><minor>' with an optional "
            "feature suffix, e.g. 'sm_80', 'sm_90' or 'sm_90a'"
        )
    return arch


def cuda_target(arch: str = "sm_90", **overrides: Any) -> Target:
    """Build a CUDA target with an LLVM host.

    Parameters
    ----------
    arch : str
        GPU architecture, ``"sm_<major><minor>"`` with an optional suffix (``"sm_80"``, ``"sm_90"``,
        ``"sm_90a"``).
    **overrides
        Attributes replacing or adding to :data:`CUDA_TARGET_DEFAULTS` (for example
        ``max_shared_memory_per_block=232448``). ``host=`` replaces the host target
        (default ``{"kind": "llvm"}``).

    Returns
    -------
    Target
        The CUDA target, e.g. ``{"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024,
        "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
        "registers_per_block": 65536}`` with host ``{"kind": "llvm"}``.

    Raises
    ------
    CodegenError
        If ``arch`` is malformed, ``kind`` is overridden with something other than ``"cuda"``, or
        TVM rejects an attribute.
    """
    _check_arch(arch)
    host = overrides.pop("host", {"kind": "llvm"})
    if overrides.get("kind", "cuda") != "cuda":
        raise CodegenError(f"cuda_target() builds CUDA targets, got kind={overrides['kind']!r}")
    config = dict(CUDA_TARGET_DEFAULTS)
    config["arch"] = arch
    config.update(overrides)
    try:
        return Target(config, host=host)
    except Exception as err:  # TVM raises ValueError/TVMError subclasses for unknown attributes
        raise CodegenError(f"TVM rejected the CUDA target {config} (host {host}): {err}") from None


def as_target(target: Any) -> Target:
    """Turn a :class:`Target`, a target dict or a plain kind string into a :class:`Target`.

    A CUDA target without a host gets an LLVM host.

    Parameters
    ----------
    target : Target or dict or str
        The target.

    Returns
    -------
    Target
        The target object.

    Raises
    ------
    CodegenError
        If TVM cannot parse ``target``.
    """
    if isinstance(target, Target):
        tgt = target
    else:
        try:
            tgt = Target(target)
        except Exception as err:
            raise CodegenError(f"invalid target {target!r}: {err}") from None
    if tgt.kind.name == "cuda" and tgt.host is None:
        tgt = Target(tgt, host={"kind": "llvm"})
    return tgt


def arch_of(target: Any) -> str:
    """The CUDA architecture of a CUDA target.

    Parameters
    ----------
    target : Target or dict or str
        A CUDA target (as made by :func:`cuda_target`).

    Returns
    -------
    str
        The ``arch`` attribute, e.g. ``"sm_90"``.

    Raises
    ------
    CodegenError
        If ``target`` is not a CUDA target or has no valid ``arch``.
    """
    tgt = as_target(target)
    if tgt.kind.name != "cuda":
        raise CodegenError(f"arch_of() needs a CUDA target, got kind {tgt.kind.name!r}")
    arch = tgt.attrs.get("arch")
    if arch is None:
        raise CodegenError(
            f"CUDA target {tgt} has no 'arch'; build it with cuda_target(arch=...)"
        )
    return _check_arch(str(arch))


def detect_cuda_arch() -> str | None:
    """The architecture of the local GPU 0.

    Returns
    -------
    str or None
        ``"sm_<major><minor>"`` (e.g. ``"sm_90"`` on an H100), or None when there is no usable
        CUDA GPU or TVM's CUDA runtime is not available.
    """
    try:
        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        version = dev.compute_version
    except Exception:  # no CUDA device API / no driver: treat as "no GPU"
        return None
    if not version:
        return None
    major, _, minor = str(version).partition(".")
    return f"sm_{major}{minor[:1] or '0'}"
