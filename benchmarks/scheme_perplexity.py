"""Perplexity of SmolLM2-135M under our other schemes: W8A8, W4A8 (+outliers), W4A4, GQSA, KV4 (CPU, HF).

Usage: python benchmarks/scheme_perplexity.py --methods w4a8-o128 w4a4-o128 ... [--windows 56] [--json PATH]
       (``--json`` adds the records, replacing those of the same method; ``--list`` prints the method names;
       ``--table --json PATH`` prints the markdown table)

Fake quantization of OUR formats in HF transformers (fp32), on the protocol of ``smollm2_perplexity.py``
(Lee background corpus, 56 windows of 512 tokens, 28,616 scored tokens; fp 30.19):

- ``w8a8``, ``w4a8-oN``, ``w4a4-oN`` (``lowbit_tvm.quant.atom``): every q/k/v/o/gate/up/down weight is replaced
  offline by ``dequantize_weight(quantize_weight(W, outliers, scheme))`` (int4 group 128 / int8 per channel, the N
  outlier input channels int8 per output channel), and a forward pre-hook replaces the layer's input by
  ``dequantize_activations`` (per-token int8 of the main channels for A8, Atom's int4 groups of 128 per token for
  A4, int8 per token for the outlier channels): exactly the numbers our W4A8 kernels multiply. Outliers are
  chosen per layer input (q/k/v share one, gate/up share one, so the pre-hook quantizes each input once) as the
  channels of largest RMS on the calibration tokens. ``-gptq``: the int4 main part by GPTQ
  (``lowbit_tvm.quant.gptq``, Hessian permuted like the weight, outlier columns int8 RTN, damping 0.01).
- ``gqsa-sXX[-refit]`` (``lowbit_tvm.quant.gqsa``): group 32, XX % of the groups of each row dropped by Wanda
  saliency, kept groups int4; ``-refit`` re-fits the kept weights by least squares first (``refit_kept``).
  Activations stay fp32.
- ``kv4-gG`` (``lowbit_tvm.quant.kv4``): fp weights, keys (after RoPE) and values quantized on write into the cache
  (asymmetric int4, one fp16 scale/zero per G channels of each head and token). Implemented as a
  ``transformers.DynamicCache`` subclass whose ``update`` (called by every attention layer right after RoPE, before
  attention reads the cache) fake-quantizes the new states; each window is one prefill, so every attention score
  reads quantized K and V. ``w4a16-kv4-gG``: the same with int4 g128 symmetric RTN weights (our W4A16 format).

Calibration (outlier channels, Wanda norms, refit and GPTQ Hessians): the inputs of every linear layer while the
fp32 model reads 8 x 512 tokens of ``lee.cor`` (``calibration_hessians`` of ``smollm2_perplexity.py``), never the
evaluation text. The per-layer data is ``H = X^T X``; functions that take activations ``[T, K]`` get ``X' = H^{1/2}``
(``X'^T X' = H``, a Cholesky factor: identical least squares, channel norms and RMS ranking).
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bcq_accuracy import linear_weights  # noqa: E402  pylint: disable=wrong-import-position
from smollm2_perplexity import GROUP, calibration_hessians  # noqa: E402  pylint: disable=wrong-import-position

from lowbit_tvm.models.corpus import lee_corpus_text  # noqa: E402
from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama  # noqa: E402
from lowbit_tvm.models.hf_reference import hf_llama  # noqa: E402
from lowbit_tvm.models.perplexity import window_perplexity  # noqa: E402
from lowbit_tvm.quant import Int4Scheme, atom, dequantize, quantize  # noqa: E402
from lowbit_tvm.quant.gptq import gptq_quantize  # noqa: E402
from lowbit_tvm.quant.gqsa import GQSAScheme, gqsa_dequantize, gqsa_quantize, keep_mask, refit_kept  # noqa: E402
from lowbit_tvm.quant.kv4 import KVScheme, fake_quantize_kv  # noqa: E402

CALIBRATION = "lee.cor, 8 windows x 512 tokens (4096 tokens), inputs of every linear layer of the fp32 model"
GQSA_GROUP = 32
DAMPING = 0.01
#: fp32 perplexity on the same protocol (``benchmarks/results/smollm2_perplexity.json``, method ``fp``).
FP_PERPLEXITY = 30.189450893995073
#: Linear layers reading the same tensor share one calibrated input (and one activation quantization).
SHARED_INPUT = {"q_proj": "q_proj", "k_proj": "q_proj", "v_proj": "q_proj", "o_proj": "o_proj",
                "gate_proj": "gate_proj", "up_proj": "gate_proj", "down_proj": "down_proj"}


@dataclass(frozen=True)
class AtomMethod:
    """Weights and activations in an Atom-style format (``lowbit_tvm.quant.atom``)."""

    scheme: atom.AtomScheme
    act: atom.ActivationScheme = atom.A8
    gptq: bool = False

    def settings(self) -> dict:
        return {"weights": self.scheme.to_json(), "activations": self.act.to_json(),
                "weight_rounding": "gptq" if self.gptq else "rtn"}


@dataclass(frozen=True)
class GQSAMethod:
    """Group-sparse int4 weights, fp activations (``lowbit_tvm.quant.gqsa``)."""

    scheme: GQSAScheme
    refit: bool = False

    def settings(self) -> dict:
        return {"weights": self.scheme.to_json(), "refit_kept": self.refit, "activations": "fp32"}


@dataclass(frozen=True)
class KVMethod:
    """Quantized KV cache (``lowbit_tvm.quant.kv4``) beside fp weights, W4A16 RTN weights (``w4a16``) or the
    build's calibrated W4A16 weights (``calibrated``: ``lowbit-tvm build --scheme w4a16-g128-asym --gptq --awq``)."""

    scheme: KVScheme
    w4a16: bool = False
    calibrated: bool = False

    def settings(self) -> dict:
        weights = "fp32"
        if self.calibrated:
            weights = Int4Scheme(GROUP, False).to_json() | {"rounding": "build --gptq --awq (true-sequential)"}
        elif self.w4a16:
            weights = Int4Scheme(GROUP, True).to_json() | {"rounding": "rtn"}
        return {"kv_cache": self.scheme.to_json(), "weights": weights, "activations": "fp32"}


def _registry() -> dict:
    out = {"w8a8": AtomMethod(atom.W8A8)}
    for outliers in (0, 32, 128):
        for rounding in (False, True):
            suffix = "-gptq" if rounding else ""
            out[f"w4a8-o{outliers}{suffix}"] = AtomMethod(atom.AtomScheme(4, 128, outliers), atom.A8, rounding)
            out[f"w4a4-o{outliers}{suffix}"] = AtomMethod(atom.AtomScheme(4, 128, outliers), atom.A4G128, rounding)
    for pct in (30, 50):
        for refit in (False, True):
            scheme = GQSAScheme(GQSA_GROUP, pct / 100, "row", "wanda")
            out[f"gqsa-s{pct}" + ("-refit" if refit else "")] = GQSAMethod(scheme, refit)
    for group in (64, 32):
        out[f"kv4-g{group}"] = KVMethod(KVScheme(4, group))
        out[f"w4a16-kv4-g{group}"] = KVMethod(KVScheme(4, group), True)
    out["w4a16cal-kv4-g32"] = KVMethod(KVScheme(4, 32), calibrated=True)
    return out


def calibrated_w4a16(model) -> dict:
    """The float weights of the build's calibrated W4A16 model (AWQ-scaled norms, dequantized linears)."""
    from lowbit_tvm.models.calibration import dequantized  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.checkpoints import Checkpoint, with_gptq  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.config import LlamaConfig  # pylint: disable=import-outside-toplevel

    checkpoint = Checkpoint(LlamaConfig.from_dict(model.config), dict(model.weights), model.tokenizer().to_str())
    calibrated = with_gptq(checkpoint, Int4Scheme(GROUP, False), awq=True)
    return dequantized(calibrated.weights, model.weights)


METHODS = _registry()


def sqrt_factor(hessian: np.ndarray) -> np.ndarray:
    """``X' = L^T`` ``[K, K]`` with ``X'^T X' = H + eps I`` (Cholesky; ``eps`` = 1e-9 of the mean diagonal keeps
    dead channels factorizable)."""
    jitter = 1e-9 * float(np.mean(np.diag(hessian))) * np.eye(hessian.shape[0])
    return np.linalg.cholesky(hessian + jitter).T


def _input_name(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:4] + [SHARED_INPUT[parts[4]], "weight"])


def _atom_gptq(w: np.ndarray, hessian: np.ndarray, outliers, scheme: atom.AtomScheme) -> np.ndarray:
    """GPTQ on the permuted int4 main part (the outlier columns keep their int8 RTN); float64 ``[N, K]``."""
    rtn = atom.quantize_weight(w, outliers, scheme)
    k = w.shape[1]
    main = rtn.perm[: rtn.main_k]
    padded_w = np.pad(w, ((0, 0), (0, 1)))[:, main]
    padded_h = np.pad(hessian, ((0, 1), (0, 1)))[np.ix_(main, main)]
    qw = gptq_quantize(padded_w, padded_h, Int4Scheme(scheme.group_size, True), DAMPING)
    full = np.zeros((w.shape[0], k + 1))
    full[:, rtn.perm] = np.concatenate([dequantize(qw).astype(np.float64), np.zeros((w.shape[0], scheme.outliers))],
                                       axis=1)
    outlier_part = atom.dequantize_weight(rtn)
    full[:, np.asarray(outliers, dtype=np.int64)] = outlier_part[:, np.asarray(outliers, dtype=np.int64)]
    return full[:, :k]


#: (scheme, gptq) -> atom_weights result: W4A8 and W4A4 of one scheme share their weights within a run.
_ATOM_WEIGHTS = {}


def atom_weights(method: AtomMethod, linears: dict, hessians: dict, calib: dict) -> tuple:
    """Replaced weights and, per linear, the ``AtomWeight`` that carries its input permutation."""
    key = (method.scheme, method.gptq)
    if key not in _ATOM_WEIGHTS:
        _ATOM_WEIGHTS[key] = _atom_weights(method, linears, hessians, calib)
    return _ATOM_WEIGHTS[key]


def _atom_weights(method: AtomMethod, linears: dict, hessians: dict, calib: dict) -> tuple:
    replaced, layers = {}, {}
    outliers = {}
    for name, w in linears.items():
        key = _input_name(name)
        if key not in outliers:
            outliers[key] = atom.select_outliers(atom.channel_scores(calib[key]), method.scheme.outliers)
        aw = atom.quantize_weight(w, outliers[key], method.scheme)
        w_hat = (_atom_gptq(w, hessians[key], outliers[key], method.scheme) if method.gptq
                 else atom.dequantize_weight(aw))
        replaced[name], layers[name] = w_hat.astype(np.float32), aw
    return replaced, layers


def activation_hooks(hf, layers: dict, act: atom.ActivationScheme) -> list:
    """Forward pre-hooks replacing each linear's input by its quantized-dequantized value (one per shared input)."""
    import torch  # pylint: disable=import-outside-toplevel

    last = {}

    def hook(name, aw):
        key = _input_name(name)

        def run(module, args):
            x = args[0]
            if key in last and last[key][0] is x:
                return (last[key][1],)
            flat = x.reshape(-1, x.shape[-1]).double().numpy()
            x_hat = torch.from_numpy(atom.dequantize_activations(flat, aw, act)).to(x.dtype).reshape(x.shape)
            last[key] = (x, x_hat)
            return (x_hat,)
        return run

    modules = dict(hf.named_modules())
    return [modules[name[: -len(".weight")]].register_forward_pre_hook(hook(name, aw)) for name, aw in layers.items()]


def gqsa_weights(method: GQSAMethod, linears: dict, calib: dict) -> dict:
    """Pruned and int4-quantized reconstructions of every linear."""
    out = {}
    for name, w in linears.items():
        x = calib[_input_name(name)]
        if method.refit:
            mask = keep_mask(w, method.scheme, x)
            qw = gqsa_quantize(refit_kept(w, mask, x, method.scheme.group, DAMPING), method.scheme, mask=mask)
        else:
            qw = gqsa_quantize(w, method.scheme, x)
        out[name] = gqsa_dequantize(qw)
    return out


def kv_cache_class(scheme: KVScheme):
    """A ``DynamicCache`` that stores (and hands to attention) fake-quantized keys and values."""
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import DynamicCache  # pylint: disable=import-outside-toplevel

    def fake(states):
        return torch.from_numpy(fake_quantize_kv(states.double().numpy(), scheme)).to(states.dtype)

    class FakeQuantKVCache(DynamicCache):
        """Quantize on write: keys arrive after RoPE."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            return super().update(fake(key_states), fake(value_states), layer_idx, *args, **kwargs)

    return FakeQuantKVCache


def logits_fn(hf, cache_class=None):
    """``ids -> logits [T, vocab]``; a fresh cache of ``cache_class`` per window when given."""
    import torch  # pylint: disable=import-outside-toplevel

    def run(ids):
        kwargs = {} if cache_class is None else {"past_key_values": cache_class(config=hf.config), "use_cache": True}
        with torch.no_grad():
            return hf(torch.as_tensor(ids, dtype=torch.long)[None], **kwargs).logits[0].float()
    return run


def hf_with(model, replaced: dict):
    """HF model with the weights in ``replaced`` swapped in (``model.weights`` left unchanged)."""
    original = dict(model.weights)
    model.weights.update({name: np.asarray(w, dtype=np.float32) for name, w in replaced.items()})
    try:
        return hf_llama(model)
    finally:
        model.weights.clear()
        model.weights.update(original)


def evaluate(method, model, linears: dict, hessians: dict, calib: dict, ids, windows: int):
    """PerplexityResult of one method."""
    hooks, cache = [], None
    if isinstance(method, AtomMethod):
        replaced, layers = atom_weights(method, linears, hessians, calib)
        hf = hf_with(model, replaced)
        hooks = activation_hooks(hf, layers, method.act)
    elif isinstance(method, GQSAMethod):
        hf = hf_with(model, gqsa_weights(method, linears, calib))
    else:
        scheme = Int4Scheme(GROUP, True)
        replaced = {name: dequantize(quantize(np.pad(w, ((0, 0), (0, -w.shape[1] % GROUP))), scheme))[:, : w.shape[1]]
                    for name, w in linears.items()} if method.w4a16 else {}
        if method.calibrated:
            replaced = calibrated_w4a16(model)
        hf = hf_with(model, replaced)
        cache = kv_cache_class(method.scheme)
    try:
        return window_perplexity(logits_fn(hf, cache), ids, 512, max_windows=windows)
    finally:
        for handle in hooks:
            handle.remove()


def calibration(model, cache: Path | None) -> tuple:
    """Per shared input: ``H`` and ``X' = H^{1/2}``; cached as ``.npz`` when ``cache`` is given."""
    if cache is not None and cache.exists():
        data = np.load(cache)
        hessians = {name: data[name] for name in data.files}
    else:
        hessians = {name: h for name, h in calibration_hessians(model).items() if _input_name(name) == name}
        if cache is not None:
            np.savez(cache, **hessians)
    return hessians, {name: sqrt_factor(h) for name, h in hessians.items()}


def _save(path: Path, records: list) -> None:
    old = json.loads(path.read_text()) if path.exists() else []
    names = {r["method"] for r in records}
    path.write_text(json.dumps([r for r in old if r["method"] not in names] + records, indent=1) + "\n")


def markdown(records: list, fp: float) -> str:
    """A markdown table: each method with its RTN and (where measured) GPTQ perplexity, relative to fp."""
    by_name = {r["method"]: r["perplexity"] for r in records}
    lines = ["| scheme | RTN | vs fp | GPTQ | vs fp |", "|---|---|---|---|---|", f"| fp32 | {fp:.2f} | | | |"]
    for name in METHODS:
        if name.endswith("-gptq") or name not in by_name:
            continue
        cells = [f"{by_name[name]:.2f}", f"{(by_name[name] / fp - 1) * 100:+.1f} %", "", ""]
        if name + "-gptq" in by_name:
            gptq = by_name[name + "-gptq"]
            cells[2:] = [f"{gptq:.2f}", f"{(gptq / fp - 1) * 100:+.1f} %"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["w8a8", "w4a8-o0", "w4a8-o32", "w4a8-o128", "w4a4-o0",
                                                          "w4a4-o128", "gqsa-s50", "gqsa-s30", "kv4-g64",
                                                          "w4a16-kv4-g64"])
    parser.add_argument("--windows", type=int, default=56)
    parser.add_argument("--json", type=Path, default=None, help="results file (records replaced by method name)")
    parser.add_argument("--hessian-cache", type=Path, default=None, help=".npz of calibration Hessians (scratch)")
    parser.add_argument("--list", action="store_true", help="print the method names")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --json and exit")
    args = parser.parse_args()
    if args.list or args.table:
        print("\n".join(METHODS) if args.list else markdown(json.loads(args.json.read_text()), FP_PERPLEXITY))
        return
    model = load_gguf_llama(find_smollm2_gguf())
    ids = model.tokenizer().encode(lee_corpus_text()).ids
    linears = linear_weights(model, model.config["num_hidden_layers"])
    hessians, calib = calibration(model, args.hessian_cache)
    for method_name in args.methods:
        start = time.time()
        method = METHODS[method_name]
        result = evaluate(method, model, linears, hessians, calib, ids, args.windows)
        record = {"method": method_name, "settings": method.settings(), "perplexity": result.perplexity,
                  "scored_tokens": result.scored_tokens, "windows": result.windows, "calibration": CALIBRATION,
                  "seconds": round(time.time() - start)}
        print(f"{method_name}: perplexity {result.perplexity:.2f} over {result.scored_tokens} tokens "
              f"({record['seconds']} s)", flush=True)
        if args.json:
            _save(args.json, [record])


if __name__ == "__main__":
    main()
