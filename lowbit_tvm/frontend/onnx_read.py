"""Read an ONNX file with clear errors: not ONNX, truncated or corrupted, external data outside the model's folder.

External data (``location`` of tensors stored beside the model) is only read from inside the folder that holds
the model: absolute paths and paths that lead out of it (``..``, symbolic links) are refused before any byte of
them is read.
"""
import os
from pathlib import Path

from ..errors import ModelError


def read_onnx(path):
    """The ``onnx.ModelProto`` of ``path`` with its external data loaded, checked by ``onnx.checker``.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.onnx`` file.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ModelError
        If the file is missing, is not an ONNX model, is truncated or corrupted, or names external data that is
        missing, too short, or outside the model's folder.
    """
    import onnx  # pylint: disable=import-outside-toplevel

    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist or is not a file")
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as err:  # protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model (not ONNX, truncated or corrupted): {err}") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{path} is not an ONNX model (no IR version or no graph with outputs); is it truncated?")
    _load_external_data(model, path.parent)
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # onnx.checker.ValidationError, or others on damaged protos
        raise ModelError(f"{path} is not a valid ONNX model (corrupted?): {str(err).splitlines()[0]}") from None
    return model


def _external_tensors(model):
    from onnx.external_data_helper import _get_all_tensors  # pylint: disable=import-outside-toplevel

    import onnx  # pylint: disable=import-outside-toplevel

    return [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


def _load_external_data(model, folder: Path) -> None:
    """Check every external-data reference, then load them into the model."""
    from onnx.external_data_helper import load_external_data_for_model  # pylint: disable=import-outside-toplevel

    tensors = _external_tensors(model)
    if not tensors:
        return
    root = folder.resolve()
    for tensor in tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        _check_location(tensor.name, location, root)
        file = (root / location).resolve()
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > file.stat().st_size:
            raise ModelError(
                f"external data file {file} of tensor {tensor.name!r} is shorter ({file.stat().st_size} bytes) than "
                f"the model says ({end} bytes): truncated?"
            )
    try:
        load_external_data_for_model(model, str(root))
    except Exception as err:
        raise ModelError(f"cannot read the external data of the model in {root}: {err}") from None


def _check_location(name: str, location: str, root: Path) -> None:
    if not location:
        raise ModelError(f"tensor {name!r} is stored externally but names no file")
    if os.path.isabs(location):
        raise ModelError(f"refusing external data of tensor {name!r} at the absolute path {location!r}: "
                         "external data must lie inside the model's folder")
    file = (root / location).resolve()
    if not file.is_relative_to(root):
        raise ModelError(f"refusing external data of tensor {name!r} at {location!r}: it points outside the model's "
                         f"folder {root}")
    if not file.is_file():
        raise ModelError(f"external data file {file} of tensor {name!r} is missing")
