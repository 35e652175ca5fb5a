"""Run a compiled ONNX model library from Python with only TVM's runtime (no ``import tvm``).

``load("model.so")`` reads the weights file beside the library (its metadata names the ONNX inputs and outputs),
uploads the parameters once and returns an ``OnnxEngine``: call it with numpy arrays or torch tensors (by
position or by the ONNX input names) and get a dict of outputs named as in the ONNX graph.
"""
import json
from pathlib import Path

import numpy as np
import torch

from ..codegen.library import _ensure_runtime, load_library, read_sidecar
from ..errors import EvaluationError, LibraryError
from ..models.engine import _read_params
from ..models.recipe import WEIGHTS_SUFFIX

# The safetensors metadata key of an ONNX model library (a Llama library has ``lowbit_tvm``).
ONNX_METADATA_KEY = "lowbit_tvm_onnx"
_POOLED_ALLOCATOR = 2
_CPU, _CUDA = 1, 2


class OnnxEngine:
    """A loaded ONNX model library.

    Attributes
    ----------
    inputs : list of dict
        ``{"name", "dtype", "shape"}`` per ONNX input (a dimension is an int, a name for a dynamic one, or None).
    outputs : list of str
        The ONNX output names, in order.
    layers : list of dict
        What the compiler did with each linear layer (kernel, note).
    device : torch.device
    """

    def __init__(self, module, meta: dict, params: list, device: torch.device):
        self._ffi = _ensure_runtime()
        self.inputs = meta["inputs"]
        self.outputs = meta["outputs"]
        self.layers = meta["layers"]
        self.meta = meta
        self.device = device
        self._vm = module["vm_load_executable"]()
        init = [_CUDA, device.index or 0, _POOLED_ALLOCATOR] if device.type == "cuda" else []
        self._vm["vm_initialization"](*init, _CPU, 0, _POOLED_ALLOCATOR)
        self._torch_params = params  # keeps the memory alive
        self._params = [self._ffi.from_dlpack(p) for p in params]

    @property
    def input_names(self) -> list:
        """The ONNX input names, in order."""
        return [spec["name"] for spec in self.inputs]

    def __call__(self, *args, **kwargs) -> dict:
        """Run the model.

        Parameters
        ----------
        *args, **kwargs
            The inputs, by position or by ONNX name (numpy arrays, torch tensors or nested lists).

        Returns
        -------
        dict of str to numpy.ndarray or torch.Tensor
            The outputs by ONNX name: torch tensors (on ``device``) when any input was one, else numpy arrays.

        Raises
        ------
        EvaluationError
            If inputs are missing, unknown, or of the wrong rank or static size.
        """
        values = self._bind(args, kwargs)
        as_torch = any(isinstance(v, torch.Tensor) for v in values)
        tensors = [self._to_device(value, spec) for value, spec in zip(values, self.inputs)]
        result = self._vm["main"](*[self._ffi.from_dlpack(t) for t in tensors], *self._params)
        results = [result] if len(self.outputs) == 1 else list(result)
        out = {}
        for name, value in zip(self.outputs, results):
            tensor = torch.from_dlpack(value)
            out[name] = tensor.clone() if as_torch else tensor.cpu().numpy().copy()
        return out

    def _bind(self, args, kwargs) -> list:
        names = self.input_names
        if len(args) > len(names):
            raise EvaluationError(f"the model takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
        bound = dict(zip(names, args))
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise EvaluationError(f"unknown input(s) {unknown}; the model's inputs are {names}")
        bound.update(kwargs)
        missing = [name for name in names if name not in bound]
        if missing:
            raise EvaluationError(f"missing input(s) {missing}; the model's inputs are {names}")
        return [bound[name] for name in names]

    def _to_device(self, value, spec: dict) -> torch.Tensor:
        dtype = getattr(torch, spec["dtype"])
        if isinstance(value, torch.Tensor):
            tensor = value.to(device=self.device, dtype=dtype)
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(value), dtype=spec["dtype"])).to(self.device)
        shape = spec["shape"]
        if shape is not None:
            bad = tensor.ndim != len(shape) or any(
                isinstance(d, int) and d != size for d, size in zip(shape, tensor.shape)
            )
            if bad:
                raise EvaluationError(
                    f"input {spec['name']!r} has shape {tuple(tensor.shape)}; the model wants {shape} "
                    "(names are dynamic dimensions)"
                )
        return tensor.contiguous()


def onnx_metadata(path) -> dict | None:
    """The ONNX-model record in the weights file beside library ``path``, None if it is not an ONNX library."""
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    weights_path = Path(path).expanduser().absolute().with_suffix(WEIGHTS_SUFFIX)
    if not weights_path.is_file():
        return None
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as err:
        raise LibraryError(f"{weights_path} is not a readable safetensors file: {err}") from None
    return json.loads(meta[ONNX_METADATA_KEY]) if ONNX_METADATA_KEY in meta else None


def load(path, device: str | None = None) -> OnnxEngine:
    """Load an ONNX model library written by ``lowbit_tvm.frontend.compile_onnx``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.so``; its ``.safetensors`` lies beside it.
    device : str or None
        ``"cuda"`` or ``"cpu"``; default: what the library was built for.

    Raises
    ------
    LibraryError
        If the library or its weights are missing or not an ONNX model library.
    LibraryMismatchError
        If the library was built for another GPU arch or TVM version.
    """
    path = Path(path).expanduser().absolute()
    module = load_library(path)
    meta = onnx_metadata(path)
    if meta is None:
        raise LibraryError(f"{path} has no ONNX model weights file ({path.with_suffix(WEIGHTS_SUFFIX).name}) beside it")
    side = read_sidecar(path) or {}
    device = torch.device(device or ("cuda" if side.get("target_kind") == "cuda" else "cpu"))
    params = _read_params(path.with_suffix(WEIGHTS_SUFFIX), meta["params"], device)
    return OnnxEngine(module, meta, params, device)
