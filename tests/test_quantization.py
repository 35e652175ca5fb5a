"""CPU tests for lowbit_tvm.quant (int4 W4A16 quantization)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from lowbit_tvm.errors import LowbitError, QuantizationError
from lowbit_tvm.quant import (
    SCHEMES,
    Int4Scheme,
    QuantizedWeight,
    dequantize,
    get_scheme,
    pack_int4,
    quantize,
    reference_matmul,
    register_scheme,
    unpack_int4,
)

ALL_SCHEMES = sorted(SCHEMES)
FP16_TINY = float(np.finfo(np.float16).tiny)


def gaussian(n, k, seed=0, mean=0.0, dtype=np.float32):
    """Random normal weight of shape [n, k]."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) + mean).astype(dtype)


def grouped(a, scheme):
    """Reshape [N, K] to [N, G, group_len]."""
    n, k = a.shape
    return a.reshape(n, scheme.groups(k), scheme.group_len(k))


def codes_of(qw):
    """Unpacked uint8 codes of a QuantizedWeight."""
    return unpack_int4(qw.packed)


def rel_error(w, w_hat):
    """Relative Frobenius error in float64."""
    w = w.astype(np.float64)
    return np.linalg.norm(w - w_hat) / np.linalg.norm(w)


# ----------------------------------------------------------------- errors


def test_error_hierarchy():
    assert issubclass(QuantizationError, LowbitError)
    assert issubclass(QuantizationError, ValueError)


# ------------------------------------------------------------ pack/unpack


def test_pack_bit_layout_known_codes():
    q = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 15, 14, 13, 12, 11, 10, 9, 8]], dtype=np.uint8)
    packed = pack_int4(q)
    assert packed.dtype == np.uint32
    assert packed.shape == (1, 2)
    assert packed[0, 0] == 0x76543210
    assert packed[0, 1] == 0x89ABCDEF


def test_pack_single_nibble_positions():
    for j in range(8):
        q = np.zeros((2, 8), dtype=np.uint8)
        q[1, j] = 0xF
        packed = pack_int4(q)
        assert packed[0, 0] == 0
        assert packed[1, 0] == 0xF << (4 * j)


def test_pack_unpack_round_trip_random():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, size=(37, 256), dtype=np.uint8)
    packed = pack_int4(q)
    assert packed.shape == (37, 32)
    np.testing.assert_array_equal(unpack_int4(packed), q)


def test_unpack_pack_round_trip_random_words():
    rng = np.random.default_rng(2)
    words = rng.integers(0, 2**32, size=(5, 12), dtype=np.uint32)
    np.testing.assert_array_equal(pack_int4(unpack_int4(words)), words)


def test_pack_matches_manual_formula():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 16, size=(4, 64), dtype=np.uint8)
    packed = pack_int4(q)
    for n in range(4):
        for w in range(8):
            expected = sum(int(q[n, 8 * w + j]) << (4 * j) for j in range(8))
            assert int(packed[n, w]) == expected


def test_pack_rejects_code_above_15():
    q = np.zeros((2, 8), dtype=np.uint8)
    q[1, 3] = 16
    with pytest.raises(QuantizationError, match="0..15"):
        pack_int4(q)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint32, np.float32])
def test_pack_rejects_non_uint8(dtype):
    with pytest.raises(QuantizationError, match="uint8"):
        pack_int4(np.zeros((2, 8), dtype=dtype))


def test_pack_rejects_k_not_multiple_of_8():
    with pytest.raises(QuantizationError, match="divisible by 8"):
        pack_int4(np.zeros((2, 12), dtype=np.uint8))


def test_pack_rejects_non_2d():
    with pytest.raises(QuantizationError, match="2-D"):
        pack_int4(np.zeros(8, dtype=np.uint8))


def test_unpack_rejects_wrong_dtype():
    with pytest.raises(QuantizationError, match="uint32"):
        unpack_int4(np.zeros((2, 2), dtype=np.int32))


# --------------------------------------------------------- quantize layout


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_quantize_output_layout(name):
    scheme = get_scheme(name)
    w = gaussian(16, 256)
    qw = quantize(w, scheme)
    groups = scheme.groups(256)
    assert qw.shape == (16, 256)
    assert qw.scheme is scheme
    assert qw.packed.dtype == np.uint32 and qw.packed.shape == (16, 32)
    assert qw.scales.dtype == np.float16 and qw.scales.shape == (16, groups)
    assert np.all(np.isfinite(qw.scales)) and np.all(qw.scales > 0)
    if scheme.symmetric:
        assert qw.zeros is None
    else:
        assert qw.zeros.dtype == np.float16 and qw.zeros.shape == (16, groups)
        assert np.all(qw.zeros == np.round(qw.zeros))
        assert qw.zeros.min() >= 0 and qw.zeros.max() <= 15


def test_quantize_accepts_scheme_name():
    w = gaussian(4, 128)
    a = quantize(w, "w4a16-g32")
    b = quantize(w, Int4Scheme(32))
    np.testing.assert_array_equal(a.packed, b.packed)
    np.testing.assert_array_equal(a.scales, b.scales)


def test_symmetric_known_values():
    # One group of 32: max |w| = 7 -> s = 1, codes = w + 8.
    row = np.array([7, -7, 0, 1, -1, 2.4, -2.6, 3.5] + [0.0] * 24, dtype=np.float32)
    qw = quantize(row[None, :], Int4Scheme(32))
    assert qw.scales[0, 0] == 1.0
    codes = codes_of(qw)[0, :8]
    np.testing.assert_array_equal(codes, [15, 1, 8, 9, 7, 10, 5, 12])
    np.testing.assert_array_equal(dequantize(qw)[0, :8], [7, -7, 0, 1, -1, 2, -3, 4])


def test_asymmetric_known_values():
    # One group: min -5, max 10 -> s = 1, z = 5.
    row = np.array([-5, 10, 0, 3.2, -2.7] + [1.0] * 27, dtype=np.float32)
    qw = quantize(row[None, :], Int4Scheme(32, symmetric=False))
    assert qw.scales[0, 0] == 1.0
    assert qw.zeros[0, 0] == 5.0
    np.testing.assert_array_equal(codes_of(qw)[0, :5], [0, 15, 5, 8, 2])
    np.testing.assert_array_equal(dequantize(qw)[0, :5], [-5, 10, 0, 3, -3])


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_scale_matches_formula(name):
    scheme = get_scheme(name)
    w = gaussian(8, 256, seed=4, mean=0.3)
    qw = quantize(w, scheme)
    g = grouped(w.astype(np.float64), scheme)
    if scheme.symmetric:
        expected = np.abs(g).max(axis=2) / 7
    else:
        hi = np.maximum(g.max(axis=2), 0)
        lo = np.minimum(g.min(axis=2), 0)
        expected = (hi - lo) / 15
    # Stored fp16 scale is the fp16 neighbour at or just below the exact scale.
    s = qw.scales.astype(np.float64)
    assert np.all(s <= expected)
    np.testing.assert_allclose(s, expected, rtol=2.0**-10)


# ------------------------------------------------------- quantization error


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_max_error_within_half_step(name):
    scheme = get_scheme(name)
    w = gaussian(32, 512, seed=5)
    qw = quantize(w, scheme)
    err = grouped(np.abs(w - dequantize(qw)).astype(np.float64), scheme).max(axis=2)
    half_step = qw.scales.astype(np.float64) / 2
    # fp16 tolerance: the scale is rounded to fp16 (relative 2^-11 per step,
    # up to 15 steps from the zero point).
    tolerance = 15 * 2.0**-10 * qw.scales.astype(np.float64) + 1e-6
    assert np.all(err <= half_step + tolerance)


@pytest.mark.parametrize(
    "name, bound",
    [
        ("w4a16-g32", 0.105),
        ("w4a16-g64", 0.115),
        ("w4a16-g128", 0.125),
        ("w4a16-pc", 0.16),
        ("w4a16-g32-asym", 0.09),
        ("w4a16-g64-asym", 0.10),
        ("w4a16-g128-asym", 0.11),
        ("w4a16-pc-asym", 0.14),
    ],
)
def test_relative_error_bounds_gaussian(name, bound):
    # Uniform-noise estimate for absmax g128: s ~ 2.9 sigma / 7, err ~ s / sqrt(12) ~ 0.12.
    w = gaussian(64, 1024, seed=6)
    assert rel_error(w, dequantize(quantize(w, name))) < bound


def test_smaller_groups_are_more_accurate():
    w = gaussian(64, 1024, seed=7)
    errors = [rel_error(w, dequantize(quantize(w, n))) for n in ("w4a16-g32", "w4a16-g64", "w4a16-g128", "w4a16-pc")]
    assert errors == sorted(errors)


@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_asymmetric_beats_symmetric_on_shifted_weights(group_size):
    w = gaussian(64, 512, seed=8, mean=2.0)
    sym = rel_error(w, dequantize(quantize(w, Int4Scheme(group_size, True))))
    asym = rel_error(w, dequantize(quantize(w, Int4Scheme(group_size, False))))
    assert asym < 0.75 * sym


def test_asymmetric_all_positive_groups():
    # Entire range positive: the grid must still cover [min, max].
    w = gaussian(16, 256, seed=9, mean=10.0)
    qw = quantize(w, "w4a16-g32-asym")
    assert np.all(qw.zeros == 0)
    err = np.abs(w - dequantize(qw))
    assert err.max() <= 14 / 15 / 2 + 1e-3  # (max - 0) / 15 / 2 with max < 14


def test_per_channel_scheme():
    w = gaussian(8, 264, seed=10)  # 264 is not a multiple of 32/64/128
    for symmetric in (True, False):
        scheme = Int4Scheme(-1, symmetric)
        qw = quantize(w, scheme)
        assert qw.scales.shape == (8, 1)
        assert scheme.group_len(264) == 264
        w_hat = dequantize(qw)
        half_step = qw.scales.astype(np.float32) / 2
        assert np.all(np.abs(w - w_hat) <= half_step * (1 + 2**-6))
        assert rel_error(w, w_hat) < 0.2


def test_per_channel_matches_g_equal_k():
    w = gaussian(4, 128, seed=11)
    a = quantize(w, "w4a16-pc")
    b = quantize(w, "w4a16-g128")
    np.testing.assert_array_equal(a.packed, b.packed)
    np.testing.assert_array_equal(a.scales, b.scales)


# --------------------------------------------------------- special groups


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_constant_groups_round_trip(name):
    w = np.zeros((6, 128), dtype=np.float32)
    w[1] = 3.25
    w[2] = -0.7
    w[3] = 1e-3
    w[4] = -1234.5
    # row 0 and row 5 stay all-zero
    w_hat = dequantize(quantize(w, name))
    np.testing.assert_array_equal(w_hat[0], 0.0)
    np.testing.assert_array_equal(w_hat[5], 0.0)
    np.testing.assert_allclose(w_hat, w, rtol=2.0**-9, atol=0)


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_zero_is_exact(name):
    w = gaussian(8, 128, seed=12, mean=0.5)
    w[:, ::3] = 0.0
    w_hat = dequantize(quantize(w, name))
    np.testing.assert_array_equal(w_hat[:, ::3], 0.0)


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_tiny_weights_clamp_scale(name):
    w = gaussian(4, 128, seed=13) * 1e-7
    qw = quantize(w, name)
    assert np.all(qw.scales == np.float16(FP16_TINY))
    assert np.all(np.abs(w - dequantize(qw)) <= FP16_TINY / 2 + 1e-12)


def test_large_but_representable_weights():
    w = gaussian(4, 128, seed=14) * 1e4
    w_hat = dequantize(quantize(w, "w4a16-g128"))
    assert np.all(np.isfinite(w_hat))
    assert rel_error(w, w_hat) < 0.13


@pytest.mark.parametrize("name", ["w4a16-g128", "w4a16-g128-asym"])
def test_scale_overflow_rejected(name):
    w = gaussian(4, 128, seed=15)
    w[2, 5] = 1e6
    with pytest.raises(QuantizationError, match="overflows float16"):
        quantize(w, name)


def test_float64_beyond_float32_range_rejected():
    w = gaussian(2, 128, dtype=np.float64)
    w[0, 0] = 1e300
    with pytest.raises(QuantizationError, match="overflows float16"):
        quantize(w, "w4a16-g32")


# ----------------------------------------------------------- idempotence


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_requantizing_dequantized_weight_is_idempotent(name):
    w = gaussian(64, 512, seed=16, mean=0.25)
    qw = quantize(w, name)
    w_hat = dequantize(qw)
    qw2 = quantize(w_hat, name)
    np.testing.assert_array_equal(qw2.packed, qw.packed)
    np.testing.assert_array_equal(qw2.scales, qw.scales)
    if qw.zeros is not None:
        np.testing.assert_array_equal(qw2.zeros, qw.zeros)
    np.testing.assert_array_equal(dequantize(qw2), w_hat)


# ------------------------------------------------------------ dequantize


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_dequantize_uses_stored_fp16_params(name):
    scheme = get_scheme(name)
    w = gaussian(8, 256, seed=17)
    qw = quantize(w, scheme)
    q = grouped(codes_of(qw).astype(np.float32), scheme)
    s = qw.scales.astype(np.float32)[:, :, None]
    z = 8.0 if qw.zeros is None else qw.zeros.astype(np.float32)[:, :, None]
    expected = ((q - z) * s).reshape(8, 256)
    w_hat = dequantize(qw)
    assert w_hat.dtype == np.float32
    np.testing.assert_array_equal(w_hat, expected)


def test_dequantize_is_nearest_grid_point():
    scheme = get_scheme("w4a16-g64")
    w = gaussian(8, 128, seed=18)
    qw = quantize(w, scheme)
    s = np.repeat(qw.scales.astype(np.float64), 64, axis=1)
    grid = (np.arange(16, dtype=np.float64) - 8)[None, None, :] * s[:, :, None]
    nearest = np.abs(grid - w[:, :, None]).min(axis=2)
    actual = np.abs(dequantize(qw).astype(np.float64) - w)
    np.testing.assert_allclose(actual, nearest, atol=1e-6)


def test_dequantize_rejects_non_quantized_weight():
    with pytest.raises(QuantizationError, match="QuantizedWeight"):
        dequantize(np.zeros((2, 8)))


def test_quantized_weight_validates_fields():
    qw = quantize(gaussian(4, 64), "w4a16-g32")
    with pytest.raises(QuantizationError, match="scales"):
        QuantizedWeight(qw.packed, qw.scales.astype(np.float32), None, qw.scheme, qw.shape)
    with pytest.raises(QuantizationError, match="packed"):
        QuantizedWeight(qw.packed[:, :4], qw.scales, None, qw.scheme, qw.shape)
    with pytest.raises(QuantizationError, match="zeros=None"):
        QuantizedWeight(qw.packed, qw.scales, qw.scales, qw.scheme, qw.shape)
    with pytest.raises(QuantizationError, match="zeros"):
        QuantizedWeight(qw.packed, qw.scales, None, get_scheme("w4a16-g32-asym"), qw.shape)


def test_quantized_weight_is_frozen():
    qw = quantize(gaussian(4, 64), "w4a16-g32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        qw.scales = None
    assert "w4a16-g32" in repr(qw)


# ------------------------------------------------------ input conversions


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_float_dtypes(dtype):
    w = gaussian(8, 128, seed=19).astype(dtype)
    qw = quantize(w, "w4a16-g32")
    ref = quantize(w.astype(np.float32), "w4a16-g32")
    np.testing.assert_array_equal(qw.packed, ref.packed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_torch_inputs_match_numpy(dtype):
    t = torch.from_numpy(gaussian(8, 128, seed=20)).to(dtype)
    qw = quantize(t, "w4a16-g64-asym")
    ref = quantize(t.float().numpy(), "w4a16-g64-asym")
    np.testing.assert_array_equal(qw.packed, ref.packed)
    np.testing.assert_array_equal(qw.scales, ref.scales)
    np.testing.assert_array_equal(qw.zeros, ref.zeros)


def test_torch_tensor_requiring_grad():
    t = torch.randn(4, 64, requires_grad=True)
    qw = quantize(t, "w4a16-g32")
    assert qw.shape == (4, 64)


# ------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "weight, phrase",
    [
        (np.zeros((4, 8, 8), dtype=np.float32), "2-D"),
        (np.zeros(128, dtype=np.float32), "2-D"),
        (np.zeros((4, 128), dtype=np.int32), "dtype int32"),
        (np.zeros((4, 128), dtype=np.uint8), "dtype uint8"),
        (np.zeros((4, 128), dtype=bool), "dtype bool"),
        (np.zeros((4, 128), dtype=np.complex64), "dtype complex64"),
        (torch.zeros(4, 128, dtype=torch.int64), "torch.int64"),
        (torch.zeros(4, 128, dtype=torch.bool), "torch.bool"),
        (torch.zeros(4, 128, dtype=torch.complex64), "torch.complex64"),
        ([[0.0] * 128] * 4, "numpy array or torch tensor, got list"),
        (np.zeros((0, 128), dtype=np.float32), "empty"),
        (np.zeros((4, 0), dtype=np.float32), "empty"),
        (np.zeros((4, 36), dtype=np.float32), "not divisible by 8"),
    ],
)
def test_bad_weights_rejected(weight, phrase):
    with pytest.raises(QuantizationError, match=phrase):
        quantize(weight, "w4a16-pc")


def test_k_not_divisible_by_group_rejected():
    w = gaussian(4, 96)  # divisible by 8 and 32, not by 64/128
    quantize(w, "w4a16-g32")
    with pytest.raises(QuantizationError, match=r"K=96 .*group size 64.*pad K with zeros"):
        quantize(w, "w4a16-g64")
    with pytest.raises(QuantizationError, match="group size 128"):
        quantize(w, "w4a16-g128-asym")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    w = gaussian(8, 128)
    w[3, 17] = bad
    w[5, 2] = bad
    with pytest.raises(QuantizationError, match=r"2 non-finite .*index \(3, 17\)"):
        quantize(w, "w4a16-g32")


def test_non_finite_torch_bfloat16_rejected():
    t = torch.zeros(4, 64, dtype=torch.bfloat16)
    t[1, 9] = float("nan")
    with pytest.raises(QuantizationError, match=r"1 non-finite .*\(1, 9\)"):
        quantize(t, "w4a16-g32")


def test_bad_scheme_argument_rejected():
    with pytest.raises(QuantizationError, match="Int4Scheme"):
        quantize(gaussian(2, 32), 128)
    with pytest.raises(QuantizationError, match="unknown quantization scheme"):
        quantize(gaussian(2, 32), "w8a8")


# -------------------------------------------------------- reference matmul


@pytest.mark.parametrize("name", ["w4a16-g128", "w4a16-g32-asym", "w4a16-pc"])
def test_reference_matmul_matches_direct_float64(name):
    w = gaussian(48, 256, seed=21)
    x = gaussian(5, 256, seed=22).astype(np.float16)
    qw = quantize(w, name)
    out = reference_matmul(x, qw)
    expected = x.astype(np.float64) @ dequantize(qw).astype(np.float64).T
    assert out.dtype == np.float64 and out.shape == (5, 48)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_reference_matmul_torch_input_and_close_to_unquantized():
    w = gaussian(32, 512, seed=23)
    x = torch.from_numpy(gaussian(4, 512, seed=24)).to(torch.bfloat16)
    out = reference_matmul(x, quantize(w, "w4a16-g32"))
    exact = x.double().numpy() @ w.astype(np.float64).T
    assert np.linalg.norm(out - exact) / np.linalg.norm(exact) < 0.12


def test_reference_matmul_small_chunks(monkeypatch):
    from lowbit_tvm.quant import int4

    monkeypatch.setattr(int4, "_CHUNK_ELEMENTS", 300)
    w = gaussian(10, 64, seed=25)
    x = gaussian(3, 64, seed=26)
    qw = quantize(w, "w4a16-g32-asym")
    expected = x.astype(np.float64) @ dequantize(qw).astype(np.float64).T
    np.testing.assert_allclose(reference_matmul(x, qw), expected, rtol=1e-12)


def test_chunked_quantize_matches_unchunked(monkeypatch):
    from lowbit_tvm.quant import int4

    w = gaussian(10, 128, seed=27)
    w[7, 100] = np.nan
    full_err = None
    try:
        quantize(w, "w4a16-g32")
    except QuantizationError as exc:
        full_err = str(exc)
    w[7, 100] = 0.0
    full = quantize(w, "w4a16-g32-asym")
    monkeypatch.setattr(int4, "_CHUNK_ELEMENTS", 200)  # 1 row per chunk
    chunked = quantize(w, "w4a16-g32-asym")
    np.testing.assert_array_equal(full.packed, chunked.packed)
    np.testing.assert_array_equal(full.scales, chunked.scales)
    np.testing.assert_array_equal(dequantize(full), dequantize(chunked))
    w[7, 100] = np.nan
    with pytest.raises(QuantizationError) as info:
        quantize(w, "w4a16-g32")
    assert str(info.value) == full_err


@pytest.mark.parametrize(
    "x, phrase",
    [
        (np.zeros((2, 128), dtype=np.float32), r"\(2, 128\).*\(16, 256\)"),
        (np.zeros(256, dtype=np.float32), "2-D"),
        (np.zeros((2, 256), dtype=np.int32), "dtype int32"),
        (torch.zeros(2, 256, dtype=torch.int8), "torch.int8"),
    ],
)
def test_reference_matmul_bad_inputs(x, phrase):
    qw = quantize(gaussian(16, 256), "w4a16-g128")
    with pytest.raises(QuantizationError, match=phrase):
        reference_matmul(x, qw)


def test_reference_matmul_rejects_non_quantized_weight():
    with pytest.raises(QuantizationError, match="QuantizedWeight"):
        reference_matmul(np.zeros((2, 8)), np.zeros((4, 8)))


# ---------------------------------------------------------------- schemes


def test_scheme_names():
    assert Int4Scheme().name == "w4a16-g128"
    assert Int4Scheme(128, symmetric=False).name == "w4a16-g128-asym"
    assert Int4Scheme(-1).name == "w4a16-pc"
    assert Int4Scheme(-1, symmetric=False).name == "w4a16-pc-asym"
    assert Int4Scheme(32).name == "w4a16-g32"


def test_registry_contents():
    expected = {
        f"w4a16-{g}{suffix}"
        for g in ("g32", "g64", "g128", "pc")
        for suffix in ("", "-asym")
    }
    assert expected <= set(SCHEMES)
    for name in expected:
        assert SCHEMES[name].name == name
        assert get_scheme(name) is SCHEMES[name]


def test_get_scheme_unknown_lists_known_names():
    with pytest.raises(QuantizationError, match=r"unknown quantization scheme 'w3a16'.*w4a16-g128-asym"):
        get_scheme("w3a16")


@pytest.mark.parametrize("group_size", [0, 16, 100, 256, -2, 128.0, True])
def test_invalid_group_size(group_size):
    with pytest.raises(QuantizationError, match=r"group_size.*\[32, 64, 128, -1\]"):
        Int4Scheme(group_size=group_size)


@pytest.mark.parametrize("bits", [2, 3, 8, 4.0])
def test_invalid_bits(bits):
    with pytest.raises(QuantizationError, match=r"bits.*\[4\]"):
        Int4Scheme(bits=bits)


def test_invalid_symmetric():
    with pytest.raises(QuantizationError, match="symmetric"):
        Int4Scheme(symmetric=1)


def test_groups_and_group_len():
    s = Int4Scheme(64)
    assert s.groups(4096) == 64
    assert s.group_len(4096) == 64
    pc = Int4Scheme(-1)
    assert pc.groups(4096) == 1
    assert pc.group_len(4096) == 4096
    with pytest.raises(QuantizationError, match=r"K=100.*group size 64.*pick a group size dividing K.*pad K with zeros"):
        s.groups(100)
    with pytest.raises(QuantizationError, match="positive"):
        s.groups(0)


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_json_round_trip(name):
    scheme = get_scheme(name)
    d = json.loads(json.dumps(scheme.to_json()))
    assert d["name"] == name
    assert Int4Scheme.from_json(d) == scheme


def test_from_json_errors():
    with pytest.raises(QuantizationError, match="missing keys"):
        Int4Scheme.from_json({"group_size": 32})
    with pytest.raises(QuantizationError, match="unknown keys"):
        Int4Scheme.from_json({"group_size": 32, "symmetric": True, "bits": 4, "foo": 1})
    with pytest.raises(QuantizationError, match="does not match"):
        Int4Scheme.from_json({"name": "w4a16-g64", "group_size": 32, "symmetric": True, "bits": 4})
    with pytest.raises(QuantizationError, match="group_size"):
        Int4Scheme.from_json({"group_size": 48, "symmetric": True, "bits": 4})


def test_scheme_frozen_and_hashable():
    s = Int4Scheme(64, symmetric=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.group_size = 32
    table = {s: "x"}
    assert table[Int4Scheme(64, symmetric=False)] == "x"
    assert hash(s) == hash(get_scheme("w4a16-g64-asym"))
    assert Int4Scheme(64) != s


def test_register_scheme():
    existing = get_scheme("w4a16-g32")
    assert register_scheme(Int4Scheme(32)) == existing
    assert len({get_scheme(n) for n in SCHEMES}) == len(SCHEMES)

    class OtherScheme(Int4Scheme):
        pass

    with pytest.raises(QuantizationError, match="already registered"):
        register_scheme(OtherScheme(32))
    assert get_scheme("w4a16-g32") is existing
    with pytest.raises(QuantizationError, match="Int4Scheme"):
        register_scheme("w4a16-g32")
