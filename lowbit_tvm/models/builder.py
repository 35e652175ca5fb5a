"""Build a Llama model graph (fp or quantized) into a deployable library plus a safetensors weights file.

``model.so`` holds the Relax VM executable with compiled device code (a fatbin for CUDA, built with nvcc,
so no GPU is needed to build); ``model.safetensors`` holds the parameters in the order the graph takes
them, and its metadata says how to run them (config, scheme, dtype, parameter order, tokenizer).
"""
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codegen import build_module, export_library
from ..errors import LibraryError
from ..kernel import PASS_CONFIG
from ..tuning import arch_key, database_dir, open_database
from ..tvm_api import tvm
from .llama import LlamaForCausalLM, export
from .model_tuning import schedule_graph
from .quantize import pack_weights, quantize
from .recipe import METADATA_KEY, WEIGHTS_SUFFIX, ModelRecipe
from .weight_schemes import weight_scheme

def graph(recipe: ModelRecipe, target):
    """The nn model of ``recipe`` for ``target``, its Relax IRModule and parameter order.

    Returns
    -------
    (LlamaForCausalLM, tvm.IRModule, list of str)
    """
    model = LlamaForCausalLM(recipe.config, target)
    model.to(recipe.dtype)
    if recipe.quantized:
        quantize(model, weight_scheme(recipe.scheme), target, skip=recipe.skip)
    mod, names = export(model)
    return model, mod, names


def build(recipe: ModelRecipe, target, database="auto", report=None):
    """Compile ``recipe`` for ``target`` (CUDA device code is compiled with nvcc, no GPU needed).

    Functions with a record in ``database`` get the tuned schedule (``model_tuning.schedule_graph``), the
    others dlight's (CUDA) or our rules' defaults. On CUDA the decode step runs as CUDA graphs (captured at
    its first run per batch size), so a step costs a few graph launches instead of one launch per kernel.

    Parameters
    ----------
    recipe : ModelRecipe
        What to build.
    target : tvm.target.Target
        The build target.
    database : "auto", str, os.PathLike, Database or None
        Tuning records: ``"auto"`` is ``tuning_logs/<arch>`` of the package (when it exists), a path a
        database folder (``lowbit-tvm tune --model --out``), None no records.
    report : callable or None
        Called with a one-line summary of how many tasks came from the database.

    Returns
    -------
    (CompiledModule, LlamaForCausalLM, list of str)
        The executable, the model (to pack weights with) and the parameter order.
    """
    model, mod, names = graph(recipe, target)
    folder, db = _database(database, target)
    mod, sources = schedule_graph(mod, model, target, db)
    if report is not None:
        report(sources.summary(folder if db is not None else "none"))
    config = dict(PASS_CONFIG, **{"relax.backend.use_cuda_graph": target.kind.name == "cuda"})
    with target, tvm.transform.PassContext(opt_level=3, config=config):
        executable = build_module(mod, target)
    return executable, model, names


def _database(database, target):
    """``(folder or None, Database or None)`` for ``build``'s ``database`` argument."""
    if database is None:
        return None, None
    if isinstance(database, str) and database == "auto":
        database = database_dir(arch_key(target))
    if isinstance(database, (str, os.PathLike)):
        return Path(database), open_database(Path(database))
    return None, database


def save_model(path, recipe: ModelRecipe, weights: dict, target, *, tokenizer_json: str | None = None,
               eos_token_id: int | None = None, overwrite: bool = False, database="auto") -> Path:
    """Build ``recipe`` and write ``path`` (``.so``) and its weights file beside it.

    Parameters
    ----------
    path : str or os.PathLike
        The library to write; the weights go to the same name with ``.safetensors``.
    recipe : ModelRecipe
        What to build.
    weights : dict of str to numpy.ndarray
        Float weights with HF names (``model.layers.0.self_attn.q_proj.weight``); quantized layers
        quantize theirs.
    target : tvm.target.Target
        The build target.
    tokenizer_json : str or None
        A ``tokenizers`` JSON to store with the weights (``generate``/``perplexity`` on text need it).
    eos_token_id : int or None
        The token that ends generation (from the checkpoint), stored with the weights.
    overwrite : bool
        Replace existing files; otherwise an existing library or weights file is an error and nothing
        is written.
    database : "auto", str, os.PathLike, Database or None
        Tuning records to apply (see ``build``); how many tasks came from them is printed.

    Returns
    -------
    Path
        The library path.
    """
    path = Path(path).expanduser().absolute()
    weights_path = path.with_suffix(WEIGHTS_SUFFIX)
    if not overwrite:
        for existing in (path, weights_path):
            if existing.exists():
                raise LibraryError(f"refusing to overwrite existing file {existing}; pass overwrite=True")
    executable, model, names = build(recipe, target, database, report=print)
    arrays = pack_weights(model, weights, names, recipe.dtype)
    record = {"recipe": recipe.to_json(), "params": names, "eos_token_id": eos_token_id}
    metadata = {METADATA_KEY: json.dumps(record)}
    if tokenizer_json is not None:
        metadata["tokenizer"] = tokenizer_json
    _write_weights(weights_path, names, arrays, metadata)
    try:
        export_library(executable, path, overwrite=overwrite)
    except Exception:
        weights_path.unlink(missing_ok=True)
        raise
    return path


def _write_weights(path: Path, names: list, arrays: list, metadata: dict) -> None:
    """Write the safetensors file atomically (a temporary file renamed into place)."""
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({name: np.ascontiguousarray(a) for name, a in zip(names, arrays)}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
