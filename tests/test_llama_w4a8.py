"""Atom-style W4A8 / W8A8 linear layers (``models.w4a8_linear.AtomLinear``) in the Relax Llama.

References, both float64 on the same quantized math:

- one layer in a Relax graph vs ``atom.reference_matmul`` (the calibrated ``AtomWeight`` the layer packed, inputs
  exact in fp16): to 1e-3;
- the whole model vs HF transformers in float64 with the weights replaced by ``atom.dequantize_weight`` of the very
  ``AtomWeight`` values the build packed (outlier channels calibrated by ``checkpoints.with_atom_outliers``) and
  each linear layer's input replaced by ``atom.dequantize_activations`` (per-token int8 main and outlier channels)
  of its fp16-rounded value (the graph hands the kernels fp16). Per-token int8 rounding is discontinuous: a
  perturbation at fp16 level (the graph's float32 norms and attention vs float64) flips 0.1-0.4 % of the codes,
  about 2e-3 of each layer input (measured on this model), and that compounds over the layers to about 2e-2 of the
  logits (rounding the reference's linear outputs to fp16 alone moves it by 2.3e-2). So the model-level check is
  that the graph lies far closer to this reference than to the float model, within 5e-2.
"""
import numpy as np
import pytest

from lowbit_tvm import load
from lowbit_tvm.errors import QuantizationError
from lowbit_tvm.models.builder import build, save_model
from lowbit_tvm.models.checkpoints import with_atom_outliers
from lowbit_tvm.models.config import ModelConfigError
from lowbit_tvm.models.hf_reference import hf_llama_from
from lowbit_tvm.models.llama import FUSED_LINEARS
from lowbit_tvm.models.recipe import ModelRecipe
from lowbit_tvm.models.weight_schemes import weight_scheme
from lowbit_tvm.quant import atom

from test_llama_cpu import LLVM, ODD, check_decode_matches_scoring, random_weights, rel, word_checkpoint

torch = pytest.importorskip("torch")

SCHEME = "w4a8-o32"  # ODD's K are 96 and 160: 32 outliers fit both


def calibrated(scheme_name: str, seed: int):
    """A random ODD checkpoint with its linears as calibrated ``AtomWeight`` values (float for 0 outliers)."""
    checkpoint, text = word_checkpoint(ODD, seed, seed, 700)
    return with_atom_outliers(checkpoint, weight_scheme(scheme_name), text=text)


def quantized_layers(weights: dict, scheme_name: str) -> dict:
    """HF layer name -> ``(AtomWeight, first row)`` the graph runs it with: a fused graph layer's weight gives each
    of its HF parts its rows (they share the permutation); float weights (0 outliers only) are quantized here by
    round-to-nearest, as the layer does."""
    scheme = weight_scheme(scheme_name)
    out = {}
    for name, value in weights.items():
        if not name.endswith("_proj.weight"):
            continue
        if not isinstance(value, atom.AtomWeight):
            value = atom.quantize_weight(value, np.zeros(0, np.int64), scheme)
        prefix = name[: -len(".weight")]
        fused = next((f for f in FUSED_LINEARS if prefix.endswith(f)), None)
        parts = [prefix] if fused is None else [prefix[: -len(fused)] + part for part in FUSED_LINEARS[fused]]
        start = 0
        for part in parts:
            out[part] = (value, start)
            start += _rows(part)
    return out


def reference_logits(weights: dict, scheme_name: str, ids) -> np.ndarray:
    """float64 logits [len, vocab] of HF transformers on the quantized math (see the module docstring)."""
    layers = quantized_layers(weights, scheme_name)
    dense = {}
    for name, (aw, start) in layers.items():
        dense[name + ".weight"] = atom.dequantize_weight(aw)[start:start + _rows(name)]
    other = {n: v.astype(np.float64) for n, v in weights.items() if not n.endswith("_proj.weight")}
    model = hf_llama_from(ODD.to_json(), {**other, **dense}, dtype=torch.float64)
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_pre_hook(_quantize_input(aw)) for name, (aw, _) in layers.items()]
    try:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(ids)[None], dtype=torch.long)).logits[0].numpy()
    finally:
        for handle in handles:
            handle.remove()


def _rows(hf_name: str) -> int:
    """Output features of an HF linear layer of ODD."""
    heads, d = ODD.num_attention_heads, ODD.head_dim
    sizes = {"q_proj": heads * d, "k_proj": ODD.num_key_value_heads * d, "v_proj": ODD.num_key_value_heads * d,
             "o_proj": ODD.hidden_size, "gate_proj": ODD.intermediate_size, "up_proj": ODD.intermediate_size,
             "down_proj": ODD.hidden_size}
    return sizes[hf_name.rpartition(".")[2]]


def _quantize_input(aw):
    def hook(module, args):
        x = args[0]
        flat = x.reshape(-1, x.shape[-1]).to(torch.float16).double().numpy()
        return (torch.from_numpy(atom.dequantize_activations(flat, aw)).reshape(x.shape),)
    return hook


def _float_logits(weights: dict, ids) -> np.ndarray:
    model = hf_llama_from(ODD.to_json(), weights)
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids)[None], dtype=torch.long)).logits[0].numpy()


@pytest.mark.parametrize("scheme_name,k,n", [(SCHEME, 96, 160), ("w4a8-o64", 160, 96), ("w8a8", 96, 48)])
def test_atom_layer_in_a_graph_matches_float64_reference(scheme_name, k, n):
    from lowbit_tvm.models.w4a8_linear import AtomLinear  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tvm_api import relax, relax_nn as nn, tvm  # pylint: disable=import-outside-toplevel

    class Layer(nn.Module):
        def __init__(self):
            self.linear = AtomLinear(k, n, weight_scheme(scheme_name), LLVM)

        def forward(self, x):
            return self.linear(x)

    model = Layer()
    mod, params = model.export_tvm(spec={"forward": {"x": nn.spec.Tensor([1, "seq", k], "float32")}})
    vm = relax.VirtualMachine(tvm.compile(mod, target=LLVM), tvm.cpu())
    rng = np.random.default_rng(k + n)
    x = rng.standard_normal((1, 40, k))
    x[..., rng.choice(k, 6, replace=False)] *= 40  # outlier channels
    x = x.astype(np.float16).astype(np.float32)  # exact in fp16, as the kernels read it
    aw = atom.calibrate(rng.standard_normal((n, k)) * 0.05, x[0], weight_scheme(scheme_name))
    arrays = model.linear.pack(aw)
    weights = [tvm.runtime.tensor(arrays[name.rpartition(".")[2]]) for name, _ in params]
    for rows in (1, 7, 40):
        ours = vm["forward"](tvm.runtime.tensor(np.ascontiguousarray(x[:, :rows])), *weights).numpy()[0]
        assert rel(ours, atom.reference_matmul(x[0, :rows], aw)) < 1e-3


@pytest.fixture(scope="module", params=[SCHEME, "w4a8-o0"])
def odd_atom(request, tmp_path_factory):
    checkpoint = calibrated(request.param, 31)
    path = save_model(tmp_path_factory.mktemp("w4a8") / "odd.so", ModelRecipe(ODD, request.param, "float32"),
                      checkpoint.weights, LLVM)
    original, _ = word_checkpoint(ODD, 31, 31, 700)
    return request.param, checkpoint.weights, original.weights, path


def test_atom_graph_matches_float64_reference(odd_atom):
    scheme_name, weights, original, path = odd_atom
    ids = np.random.default_rng(8).integers(0, ODD.vocab_size, 27)
    ours = load(path).score(ids)
    reference = reference_logits(weights, scheme_name, ids)
    assert rel(ours, reference) < 5e-2  # see the module docstring
    assert rel(ours, _float_logits(original, ids)) > 5 * rel(ours, reference)


def test_atom_decode_agrees_with_scoring(odd_atom):
    _, _, _, path = odd_atom
    check_decode_matches_scoring(load(path), ODD.vocab_size, 9, 2e-3)


def test_outliers_are_calibrated_and_stored_in_the_weights_file(odd_atom):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    scheme_name, weights, _, path = odd_atom
    stored = load_file(path.with_suffix(".safetensors"))
    aw = weights["model.layers.1.mlp.gate_up_proj.weight"] if scheme_name == SCHEME else None
    perm = stored["model.layers.1.mlp.gate_up_proj.perm"]
    if aw is None:  # no outliers: the main channels in order, zero-padded to whole 128-channel tiles
        assert perm.tolist() == list(range(96)) + [96] * 32
        return
    assert np.array_equal(perm, aw.perm)
    assert sorted(perm[-32:].tolist()) == perm[-32:].tolist() and len(set(perm[-32:])) == 32


def test_outliers_are_the_channels_of_largest_rms():
    from lowbit_tvm.models.checkpoints import _input_energy  # pylint: disable=import-outside-toplevel
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

    checkpoint, text = word_checkpoint(ODD, 41, 41, 300)
    ids = Tokenizer.from_str(checkpoint.tokenizer_json).encode(text).ids
    energy = _input_energy(checkpoint, [ids], ("down_proj",))["model.layers.0.mlp.down_proj.weight"]
    out = with_atom_outliers(checkpoint, weight_scheme(SCHEME), text=text)
    aw = out.weights["model.layers.0.mlp.down_proj.weight"]
    assert set(aw.perm[-32:].tolist()) == set(np.argsort(-energy)[:32].tolist())
    assert "model.layers.0.self_attn.q_proj.weight" not in out.weights  # replaced by the fused layer's weight


def test_atom_bad_input_is_named(tmp_path):
    weights = random_weights(ODD, 5)
    with pytest.raises(ModelConfigError, match="calibrate them first"):
        save_model(tmp_path / "bad.so", ModelRecipe(ODD, SCHEME, "float32"), weights, LLVM)
    with pytest.raises(QuantizationError, match=r"outlier count 128 must lie in \[0, K=96\]"):
        save_model(tmp_path / "bad.so", ModelRecipe(ODD, "w4a8-o128", "float32"), weights, LLVM)
    with pytest.raises(QuantizationError, match="multiple of 32"):
        weight_scheme("w4a8-o48")
    checkpoint = calibrated(SCHEME, 6)
    with pytest.raises(ModelConfigError, match="does not fit"):  # calibrated for 32 outliers, built for 64
        save_model(tmp_path / "bad.so", ModelRecipe(ODD, "w4a8-o64", "float32"), checkpoint.weights, LLVM)
    assert not list(tmp_path.iterdir()), "a failed build left files behind"


def test_cli_names_bad_atom_schemes_before_loading_anything(tmp_path, capsys):
    from argparse import Namespace  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.cli import _calibration_scheme, main  # pylint: disable=import-outside-toplevel

    with pytest.raises(ModelConfigError, match="drop --awq/--gptq"):
        _calibration_scheme(Namespace(scheme=SCHEME, awq=True, gptq=False, gptq_windows=32))
    # "tiny" has no checkpoint: the scheme must be refused first
    assert main(["build", "--model", "tiny", "--scheme", "w4a8-o48", "--target", "llvm", "-o",
                 str(tmp_path / "x.so")]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("hint", [1, 16, 64])
def test_atom_layer_graph_builds_for_sm90(hint):
    """One layer (W4A8, 128 outliers, K not a multiple of 128) in a Relax graph, built to sm_90 device code: the
    quantize kernel and both GEMMs on our CUDA schedules, the rows padded to the block tile and sliced back."""
    from lowbit_tvm.codegen import build_module  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen.target import cuda_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import PASS_CONFIG  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.rows_hint import rows_hint  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.w4a8_linear import AtomLinear  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tvm_api import relax_nn as nn, tvm  # pylint: disable=import-outside-toplevel

    target = cuda_target("sm_90")

    class Layer(nn.Module):
        def __init__(self):
            self.linear = AtomLinear(576, 960, weight_scheme("w4a8-o128"), target)

        def forward(self, x):
            with rows_hint(hint):
                return self.linear(x)

    rows = 1 if hint == 1 else "rows"
    mod, _ = Layer().export_tvm(spec={"forward": {"x": nn.spec.Tensor([rows, 576], "float16")}})
    names = sorted(gv.name_hint for gv in mod.get_global_vars())
    assert sum(name.startswith(("quant_", "gemm_")) for name in names) == 3 and "first_rows" in names
    with target, tvm.transform.PassContext(opt_level=3, config=PASS_CONFIG):
        assert build_module(mod, target) is not None


def test_atom_graph_builds_for_sm90():
    from lowbit_tvm.codegen.target import cuda_target  # pylint: disable=import-outside-toplevel

    executable, model, names = build(ModelRecipe(ODD, SCHEME, "float16"), cuda_target("sm_90"), database=None)
    assert executable is not None
    assert sum(name.endswith(".perm") for name in names) == 4 * ODD.num_hidden_layers
    assert model.model.layers[0].mlp.down_proj.scheme == weight_scheme(SCHEME)


@pytest.fixture(scope="module")
def gpu_atom(tmp_path_factory):
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    checkpoint = calibrated(SCHEME, 51)
    path = save_model(tmp_path_factory.mktemp("w4a8_gpu") / "odd.so", ModelRecipe(ODD, SCHEME, "float16"),
                      checkpoint.weights, default_target())
    original, _ = word_checkpoint(ODD, 51, 51, 700)
    return load(path), checkpoint.weights, original.weights


@pytest.mark.gpu
def test_atom_graph_on_the_gpu_matches_float64_reference(gpu_atom):
    engine, weights, original = gpu_atom
    assert engine.device.type == "cuda"
    for seed, length in ((0, 1), (1, 17), (2, 70)):  # 1, 1 and 2 row tiles of the prefill GEMM (64 rows)
        ids = np.random.default_rng(seed).integers(0, ODD.vocab_size, length)
        ours, reference = engine.score(ids), reference_logits(weights, SCHEME, ids)
        # fp16 activations and KV cache through the whole graph; code flips compound (module docstring)
        assert rel(ours, reference) < 5e-2
        assert rel(ours, _float_logits(original, ids)) > 3 * rel(ours, reference)


@pytest.mark.gpu
def test_atom_decode_on_the_gpu_agrees_with_scoring(gpu_atom):
    engine, _, _ = gpu_atom
    check_decode_matches_scoring(engine, ODD.vocab_size, 14, 5e-2)
