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


def _output_error(w, x, qw):
    return np.linalg.norm(x @ (w - dequantize(qw).astype(np.float64)).T) / np.linalg.norm(x @ w.T)


@pytest.mark.parametrize("name", ["w4a16-g128", "w4a16-g64-asym"])
def test_act_order_keeps_the_format_and_the_static_groups(name):
    from lowbit_tvm.quant import unpack_int4  # pylint: disable=import-outside-toplevel

    w, x = _layer(1)
    scheme = get_scheme(name)
    h = input_hessian(x)
    ordered = gptq_quantize(w, h, scheme, act_order=True)
    rtn = quantize(w, scheme)
    # static groups: the scales (and zeros) are round-to-nearest's of the original weights, per contiguous group
    assert np.array_equal(ordered.scales, rtn.scales)
    assert (ordered.zeros is None) == (rtn.zeros is None)
    if ordered.zeros is not None:
        assert np.array_equal(ordered.zeros, rtn.zeros)
    # the packed codes dequantize with their own column's group, as every kernel reads them
    codes = unpack_int4(ordered.packed).astype(np.float64)
    group = scheme.group_size
    s = np.repeat(ordered.scales.astype(np.float64), group, axis=1)
    z = 8.0 if ordered.zeros is None else np.repeat(ordered.zeros.astype(np.float64), group, axis=1)
    assert np.array_equal(dequantize(ordered), ((codes - z) * s).astype(np.float32))
    # and act-order compensates better than in-order GPTQ here (large inputs first), far better than RTN
    assert _output_error(w, x, ordered) < _output_error(w, x, gptq_quantize(w, h, scheme))
    assert _output_error(w, x, ordered) < 0.7 * _output_error(w, x, rtn)


def test_a_fixed_grid_is_kept_and_a_wrong_one_refused():
    from lowbit_tvm.quant.awq import clip_grid  # pylint: disable=import-outside-toplevel

    w, x = _layer(2)
    scheme = get_scheme("w4a16-g64-asym")
    h = input_hessian(x)
    grid = clip_grid(w, h, scheme)
    ours = gptq_quantize(w, h, scheme, grid=grid)
    assert np.array_equal(ours.scales, grid.scales) and np.array_equal(ours.zeros, grid.zeros)
    assert _output_error(w, x, ours) < _output_error(w, x, grid) < _output_error(w, x, quantize(w, scheme))
    with pytest.raises(QuantizationError, match="grid must be a w4a16-g128"):
        gptq_quantize(w, h, get_scheme("w4a16-g128"), grid=grid)
