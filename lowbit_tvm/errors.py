"""User-facing exception types for ``lowbit_tvm``."""


class LowbitError(Exception):
    """Base class for all user-facing errors raised by ``lowbit_tvm``."""


class QuantizationError(LowbitError, ValueError):
    """Invalid quantization input, scheme, or quantized data."""


class CodegenError(LowbitError, RuntimeError):
    """Building device code failed: bad target, TVM lowering error, or ``nvcc`` missing/failing."""


class LibraryError(LowbitError, RuntimeError):
    """Exporting or loading a compiled library failed (missing file, not a TVM library, ...)."""


class LibraryMismatchError(LibraryError):
    """A library was built for another GPU architecture or another TVM version than this process."""


class ModelError(LowbitError, ValueError):
    """A model or data file is missing, unreadable, or not of the expected kind (e.g. not a llama GGUF)."""


class MissingPackageError(LowbitError, ImportError):
    """A package that ships model weights or data is not installed; the message names the pip command."""


class EvaluationError(LowbitError, ValueError):
    """Invalid input to a model evaluation (perplexity windows, token ids, logits of the wrong shape)."""


class UnsupportedOperatorError(ModelError):
    """An imported model uses operators we cannot compile; ``ops`` maps each operator to its node names."""

    def __init__(self, message: str, ops: dict):
        super().__init__(message)
        self.ops = ops
