"""Model frontends: ONNX models imported into Relax, their linear layers on our low-bit kernels.

``compile_onnx(model.onnx, model.so, scheme, target)`` writes a library and its weights; ``load`` (also
``lowbit_tvm.load``) runs it with only TVM's runtime. Modules: ``onnx_read`` (reading, bad-file errors),
``onnx_linears`` (the ONNX pre-pass: linear layers and their weights), ``onnx_fold`` (constant nodes TVM's
importer mishandles), ``onnx_prequantized`` (MatMulNBits and
block-wise DequantizeLinear weights in our format), ``onnx_import`` (operator check, ``from_onnx``),
``onnx_quantize_pass`` (the Relax pass onto the W4A16 kernel), ``onnx_calibrate`` (calibration: AWQ scales,
clipping, GPTQ, sequential; ``OnnxRecipe``), ``onnx_awq`` (groups of layers sharing an input, where an AWQ scale's
inverse goes in the graph), ``onnx_segments`` (onnxruntime runs of a graph piece by piece),
``onnx_library`` (build and save), ``onnx_engine`` (load and run), ``onnx_converters`` (TVM converter overrides:
``Range`` over a dynamic dimension).
"""
import importlib

_LAZY = {
    "compile_onnx": "onnx_library",
    "import_onnx": "onnx_import",
    "load": "onnx_engine",
    "OnnxEngine": "onnx_engine",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
