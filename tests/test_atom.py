"""Atom-style W4A8/W8A8 quantization math on the CPU (float64), the int8 fragment layout, bad input."""
import numpy as np
import pytest

from lowbit_tvm.errors import QuantizationError
from lowbit_tvm.quant import atom, s8_layout


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _planted(rng, m, k, n, outliers, factor=100.0):
    """Activations with ``outliers`` channels ``factor`` times larger, and a weight [N, K]."""
    x = rng.standard_normal((m, k))
    channels = rng.choice(k, outliers, replace=False)
    x[:, channels] *= factor
    return x, rng.standard_normal((n, k)), np.sort(channels)


@pytest.mark.parametrize("bits", [4, 8])
def test_s8_layout_round_trip_and_register_decode(bits):
    rng = np.random.default_rng(0)
    low, high = (-8, 8) if bits == 4 else (-128, 128)
    codes = rng.integers(low, high, (48, 96)).astype(np.int8)
    words = s8_layout.to_s8_layout(codes, bits)
    assert words.shape == (3, 3, 32, s8_layout.WORDS[bits]) and words.dtype == np.uint32
    np.testing.assert_array_equal(s8_layout.from_s8_layout(words, bits), codes)
    # What the kernel does per lane: int4 -> registers (w << 4) & 0xF0F0F0F0, w & 0xF0F0F0F0 (bytes = 16 q).
    if bits == 4:
        regs = np.stack([(words[..., 0] << 4) & 0xF0F0F0F0, words[..., 0] & 0xF0F0F0F0,
                         (words[..., 1] << 4) & 0xF0F0F0F0, words[..., 1] & 0xF0F0F0F0], axis=-1).astype(np.uint32)
        scale = 16
    else:
        regs, scale = words, 1
    frag = regs.view(np.uint8).reshape(3, 3, 32, 16).view(np.int8).astype(np.int64)  # little-endian bytes
    for i in range(16):
        for j in range(32):
            lane, byte = s8_layout.lane_of(i, j), s8_layout.byte_of(i, j)
            np.testing.assert_array_equal(frag[:, :, lane, byte], scale * codes[i::16, j::32].astype(np.int64))


def test_layout_rejects_bad_shapes_and_codes():
    with pytest.raises(QuantizationError, match="N % 16"):
        s8_layout.to_s8_layout(np.zeros((8, 32), np.int8), 4)
    with pytest.raises(QuantizationError, match=r"\[-8, 7\]"):
        s8_layout.to_s8_layout(np.full((16, 32), 9, np.int8), 4)


def test_reference_is_dequantized_product_and_w8a8_is_close():
    rng = np.random.default_rng(1)
    x, w, _ = _planted(rng, 7, 320, 48, 32)
    for scheme in (atom.AtomScheme(4, 128, 32), atom.AtomScheme(8, None, 0)):
        aw = atom.calibrate(w, x, scheme)
        q_main, s_main, q_out, s_out = atom.quantize_activations(x, aw)
        x_hat = np.zeros((7, 321))
        x_hat[:, aw.perm] = np.concatenate([q_main * s_main[:, None], q_out * s_out[:, None]], axis=1)
        x_hat[:, 320] = 0.0
        expected = x_hat[:, :320] @ atom.dequantize_weight(aw).T
        np.testing.assert_allclose(atom.reference_matmul(x, aw), expected, rtol=1e-9, atol=1e-9)
    w8 = atom.quantize_weight(w, [], atom.W8A8)
    assert _rel(atom.dequantize_weight(w8), w) < 0.01


def test_calibration_finds_planted_outliers_and_padding():
    rng = np.random.default_rng(2)
    x, w, channels = _planted(rng, 64, 576, 32, 32)
    scheme = atom.AtomScheme(4, 128, 32)
    picked = atom.select_outliers(atom.channel_scores(x), 32)
    np.testing.assert_array_equal(picked, channels)
    perm = atom.permutation(576, picked, scheme)
    assert perm.shape == (640 + 32,) and scheme.main_k(576) == 640
    np.testing.assert_array_equal(perm[-32:], channels)
    assert (perm[544:640] == 576).all() and sorted(perm[:544]) == sorted(set(range(576)) - set(channels))


@pytest.mark.parametrize("m", [1, 16, 33])
def test_outlier_path_matters(m):
    """x100 outlier channels: with them kept in int8 the error stays small; without, it explodes."""
    rng = np.random.default_rng(3 + m)
    k, n = 1024, 64
    x, w, _ = _planted(rng, m, k, n, 128)
    exact = x @ w.T
    errors = {}
    for outliers in (0, 128):
        aw = atom.calibrate(w, x, atom.AtomScheme(4, 128, outliers))
        errors[outliers] = _rel(atom.reference_matmul(x, aw), exact)
    # Outliers dominate the output; in int8 (weights and activations) they are nearly exact (~0.01), while
    # one per-token scale for all channels flushes the normal channels to a few codes (~0.12).
    assert errors[128] < 0.03, errors
    assert errors[0] > 5 * errors[128], errors


def test_bad_input_errors():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((16, 256))
    with pytest.raises(QuantizationError, match="must lie in"):
        atom.select_outliers(np.ones(256), 288)
    with pytest.raises(QuantizationError, match="multiple of 32"):
        atom.AtomScheme(4, 128, 48)
    with pytest.raises(QuantizationError, match="multiple of 32"):
        atom.select_outliers(np.ones(256), 40)
    with pytest.raises(QuantizationError, match="group_size=None"):
        atom.AtomScheme(8, 128, 0)
    aw = atom.quantize_weight(w, [0, 5] + list(range(10, 40)), atom.AtomScheme(4, 128, 32))
    x = rng.standard_normal((3, 256))
    for bad in (np.inf, np.nan):
        x_bad = x.copy()
        x_bad[1, 7] = bad
        with pytest.raises(QuantizationError, match="Inf/NaN"):
            atom.quantize_activations(x_bad, aw)
    with pytest.raises(QuantizationError, match="distinct"):
        atom.quantize_weight(w, [0] * 32, atom.AtomScheme(4, 128, 32))
    with pytest.raises(QuantizationError, match="K=255"):
        atom.quantize_activations(x[:, :255], aw)


@pytest.mark.parametrize("outliers", [0, 32])
def test_dequantized_activations_match_the_kernel_math(outliers):
    """A8: ``dequantize_activations`` times the dequantized weight is ``reference_matmul``; A4 groups: every main
    value within half its group's step ``amax / 7``, every outlier within half of ``amax / 127``."""
    rng = np.random.default_rng(5 + outliers)
    x, w, _ = _planted(rng, 9, 320, 48, 32, factor=20.0)
    aw = atom.calibrate(w, x, atom.AtomScheme(4, 128, outliers))
    np.testing.assert_allclose(atom.dequantize_activations(x, aw) @ atom.dequantize_weight(aw).T,
                               atom.reference_matmul(x, aw), rtol=1e-9, atol=1e-9)
    x_hat = atom.dequantize_activations(x, aw, atom.A4G128)
    gathered = np.concatenate([x, np.zeros((9, 1))], axis=1)[:, aw.perm]
    main = gathered[:, : aw.main_k].reshape(9, -1, 128)
    step = np.abs(main).max(axis=2) / 7
    err = np.abs(np.concatenate([x_hat, np.zeros((9, 1))], axis=1)[:, aw.perm] - gathered)
    assert (err[:, : aw.main_k].reshape(9, -1, 128) <= step[:, :, None] / 2 * (1 + 1e-9)).all()
    if outliers:
        out_step = np.abs(gathered[:, aw.main_k:]).max(axis=1) / 127
        assert (err[:, aw.main_k:] <= out_step[:, None] / 2 * (1 + 1e-9)).all()
    q_main, s_main, _, _ = atom.quantize_activations(x, aw, atom.A4G128)
    assert s_main.shape == (9, aw.main_k // 128) and np.abs(q_main).max() == 7


def test_w4a4_groups_and_outliers_matter():
    """int4 activations: per-group scales beat one per token, and int8 outliers beat none (planted x30)."""
    rng = np.random.default_rng(6)
    x, w, _ = _planted(rng, 16, 1024, 64, 128, factor=30.0)
    exact = x @ w.T
    errors = {}
    for outliers, act in ((0, atom.A4G128), (128, atom.A4G128), (128, atom.ActivationScheme(4, None))):
        aw = atom.calibrate(w, x, atom.AtomScheme(4, 128, outliers))
        y = atom.dequantize_activations(x, aw, act) @ atom.dequantize_weight(aw).T
        errors[(outliers, act.name)] = _rel(y, exact)
    assert errors[(128, "a4-g128")] < 0.15, errors
    assert errors[(0, "a4-g128")] > 2 * errors[(128, "a4-g128")], errors
    assert errors[(128, "a4")] > 1.05 * errors[(128, "a4-g128")], errors


def test_activation_scheme_rejects_bad_fields():
    with pytest.raises(QuantizationError, match="4 or 8"):
        atom.ActivationScheme(6)
    with pytest.raises(QuantizationError, match="divide 128"):
        atom.ActivationScheme(4, 96)
    assert atom.A4G128.name == "a4-g128" and atom.A8.qmax == 127 and atom.A4G128.qmax == 7
