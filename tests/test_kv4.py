"""The low-bit KV cache math (``lowbit_tvm.quant.kv4``) against float64, and its bad-input errors."""
import numpy as np
import pytest

from lowbit_tvm.errors import QuantizationError
from lowbit_tvm.quant.kv4 import KV4, KVScheme, dequantize_kv, fake_quantize_kv, quantize_kv


def _states(rng, shape, spread=3.0):
    """Keys-like states: per-channel offsets and scales (RoPE'd keys have channel-dependent ranges)."""
    return rng.standard_normal(shape) * rng.uniform(0.1, spread, shape[-1]) + rng.uniform(-2, 2, shape[-1])


@pytest.mark.parametrize("scheme", [KV4, KVScheme(4, 32), KVScheme(3, 16), KVScheme(8, 64)])
@pytest.mark.parametrize("shape", [(1, 3, 7, 64), (2, 9, 64), (5, 128)])
def test_round_trip_error_is_at_most_half_a_step(scheme, shape):
    rng = np.random.default_rng(sum(shape) + scheme.bits)
    x = _states(rng, shape)
    q = quantize_kv(x, scheme)
    groups = shape[-1] // scheme.group
    assert q.codes.shape == shape and q.codes.dtype == np.uint8 and int(q.codes.max()) <= scheme.levels
    assert q.scales.shape == shape[:-1] + (groups,) and q.scales.dtype == q.zeros.dtype == np.float16
    x_hat = dequantize_kv(q)
    grouped = x.reshape(*shape[:-1], groups, scheme.group)
    err = np.abs(x_hat - x).reshape(grouped.shape)
    step = q.scales.astype(np.float64)[..., None]
    assert (err <= step / 2 * (1 + 1e-9)).all()
    # The step is the group's range over 2^bits - 1, up to fp16 rounding of zero and scale (< 0.2 %).
    span = grouped.max(axis=-1) - grouped.min(axis=-1)
    assert (q.scales.astype(np.float64) <= span / scheme.levels * 1.002 + 1e-7).all()
    # The zero is the minimum rounded down to fp16, so the minimum decodes from code 0 within half a step.
    assert (q.zeros.astype(np.float64) <= grouped.min(axis=-1)).all()


def test_kv4_error_level_and_group_size():
    """4-bit on Gaussian groups of 64: relative RMS error ~ range / 15 / sqrt(12) / sigma (about 0.08);
    smaller groups cannot be worse on average."""
    rng = np.random.default_rng(7)
    x = _states(rng, (4, 256, 64))
    errors = {g: np.linalg.norm(fake_quantize_kv(x, KVScheme(4, g)) - x) / np.linalg.norm(x) for g in (64, 32, 16)}
    assert 0.01 < errors[64] < 0.12, errors
    assert errors[16] < errors[32] < errors[64], errors
    assert np.linalg.norm(fake_quantize_kv(x, KVScheme(8, 64)) - x) / np.linalg.norm(x) < errors[64] / 10


def test_constant_groups_and_bad_input():
    q = quantize_kv(np.full((2, 64), -1.5), KV4)
    np.testing.assert_array_equal(dequantize_kv(q), np.full((2, 64), -1.5))
    with pytest.raises(QuantizationError, match="multiple of the KV group"):
        quantize_kv(np.zeros((3, 48)), KV4)
    with pytest.raises(QuantizationError, match="Inf/NaN"):
        quantize_kv(np.array([[np.nan] + [0.0] * 63]), KV4)
    with pytest.raises(QuantizationError, match="fp16"):
        quantize_kv(np.full((1, 64), 1e6), KV4)
    with pytest.raises(QuantizationError, match="non-empty"):
        quantize_kv(np.zeros((0, 64)), KV4)
    with pytest.raises(QuantizationError, match=r"\[2, 8\]"):
        KVScheme(1, 64)
    with pytest.raises(QuantizationError, match="positive"):
        KVScheme(4, 0)
    assert KV4.name == "kv4-g64" and KV4.to_json() == {"bits": 4, "group": 64}
