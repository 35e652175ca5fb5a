"""GPTQ into our int4 format: a valid QuantizedWeight, lower output error than round-to-nearest."""
import numpy as np
import pytest

from lowbit_tvm.errors import QuantizationError
from lowbit_tvm.quant import dequantize, get_scheme, quantize
from lowbit_tvm.quant.gptq import gptq_quantize, input_hessian


def _layer(seed=0, n=96, k=256, tokens=512):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k))
    x = rng.standard_normal((tokens, k)) @ (np.eye(k) + 0.3 * rng.standard_normal((k, k)))  # correlated inputs
    x[:, ::29] *= 8.0
    return w, x


@pytest.mark.parametrize("name", ["w4a16-g128", "w4a16-g64-asym", "w4a16-g32"])
def test_gptq_beats_round_to_nearest_on_the_output(name):
    w, x = _layer()
    scheme = get_scheme(name)
    ours = gptq_quantize(w, input_hessian(x), scheme)
    rtn = quantize(w, scheme)
    assert ours.packed.shape == rtn.packed.shape and ours.scales.dtype == np.float16

    def output_error(qw):
        return np.linalg.norm(x @ (w - dequantize(qw).astype(np.float64)).T) / np.linalg.norm(x @ w.T)

    assert output_error(ours) < 0.8 * output_error(rtn)


def test_hessian_of_the_wrong_shape_is_refused():
    w, x = _layer()
    with pytest.raises(QuantizationError, match=r"hessian must be a finite \[256, 256\] matrix"):
        gptq_quantize(w, input_hessian(x[:, :128]), get_scheme("w4a16-g128"))
