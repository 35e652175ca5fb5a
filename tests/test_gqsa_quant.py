"""GQSA pruning, group quantization of kept groups, BSR packing and validation (CPU, NumPy only)."""
import numpy as np
import pytest

from lowbit_tvm.errors import QuantizationError
from lowbit_tvm.quant.gqsa import (
    GQSAScheme,
    GQSAWeight,
    dense_reference,
    gqsa_dequantize,
    gqsa_quantize,
    keep_mask,
    pack_bsr,
    to_slots,
    unpack_bsr,
)


def _weight(n=24, k=256, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("group", [16, 64, 128])
def test_balanced_rows_keep_the_same_count_and_the_most_salient(sparsity, group):
    w = _weight(k=512)
    scheme = GQSAScheme(group, sparsity, "row", "magnitude")
    mask = keep_mask(w, scheme)
    groups = 512 // group
    keep = round((1 - sparsity) * groups)
    assert (mask.sum(axis=1) == keep).all()
    scores = np.abs(w).reshape(24, groups, group).sum(axis=2)
    kept_min = np.where(mask, scores, np.inf).min(axis=1)
    dropped_max = np.where(mask, -np.inf, scores).max(axis=1)
    assert (kept_min >= dropped_max).all()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_layer_balance_keeps_the_global_top_groups(sparsity):
    w = _weight() * np.linspace(0.1, 3.0, 24)[:, None]  # rows of different scale: uneven counts
    mask = keep_mask(w, GQSAScheme(32, sparsity, "layer", "magnitude"))
    assert mask.sum() == round((1 - sparsity) * mask.size)
    assert len(set(mask.sum(axis=1).tolist())) > 1
    scores = np.abs(w).reshape(24, -1, 32).sum(axis=2)
    assert scores[mask].min() >= scores[~mask].max()


def test_wanda_uses_activation_norms():
    w = np.ones((4, 128), dtype=np.float32)
    x = np.ones((16, 128), dtype=np.float32)
    x[:, 64:96] *= 10.0  # channels of column block 2 (g=32) carry the activations
    mask = keep_mask(w, GQSAScheme(32, 0.75, "row", "wanda"), x)
    assert (mask == np.array([False, False, True, False])).all()
    with pytest.raises(QuantizationError, match="calibration activations"):
        keep_mask(w, GQSAScheme(32, 0.5, "row", "wanda"))


@pytest.mark.parametrize("balance", ["row", "layer"])
def test_quantize_roundtrip_and_dense_reconstruction(balance):
    w = _weight(k=384)
    qw = gqsa_quantize(w, GQSAScheme(64, 0.5, balance))
    dense = gqsa_dequantize(qw)
    codes, scales, mask = unpack_bsr(qw)
    assert qw.nnz == mask.sum() and abs(qw.density - 0.5) < 0.01
    assert (dense.reshape(24, -1, 64)[~mask] == 0).all()
    kept = w.reshape(24, -1, 64)[mask]
    err = np.abs(dense.reshape(24, -1, 64)[mask] - kept)
    assert (err <= scales[mask].astype(np.float32)[:, None] * 0.5 + 1e-6).all()  # round to nearest
    again = pack_bsr(codes, scales, mask, qw.scheme)
    for name in ("indptr", "indices", "blocks", "scales"):
        np.testing.assert_array_equal(getattr(again, name), getattr(qw, name))
    x = np.random.default_rng(1).standard_normal((3, 384))
    np.testing.assert_allclose(dense_reference(x, qw), x @ dense.astype(np.float64).T, rtol=1e-12)


def test_dense_scheme_matches_plain_group_int4():
    from lowbit_tvm.quant import Int4Scheme, dequantize, quantize

    w = _weight(k=256)
    dense = gqsa_dequantize(gqsa_quantize(w, GQSAScheme(64, 0.0)))
    np.testing.assert_array_equal(dense, dequantize(quantize(w, Int4Scheme(64, True))))


def test_slots_pad_with_zero_weights():
    w = _weight(n=6, k=256)
    w[2] = 0.0  # a row whose groups all score 0
    qw = gqsa_quantize(w, GQSAScheme(32, 0.5, "layer"))
    assert qw.row_counts[2] == 0
    slots = int(qw.row_counts.max()) + 3
    words, scales, indices = to_slots(qw, slots)
    assert words.shape == (6, slots * 4) and scales.shape == indices.shape == (6, slots)
    rebuilt = np.zeros((6, 256))
    from lowbit_tvm.quant.int4 import unpack_int4

    codes = unpack_int4(words).reshape(6, slots, 32).astype(np.float64) - 8
    for n in range(6):
        for s in range(slots):
            rebuilt[n, indices[n, s] * 32:(indices[n, s] + 1) * 32] += codes[n, s] * float(scales[n, s])
    np.testing.assert_array_equal(rebuilt, gqsa_dequantize(qw))
    with pytest.raises(QuantizationError, match="cannot hold"):
        to_slots(qw, int(qw.row_counts.max()) - 1)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_bad_sparsity(sparsity):
    with pytest.raises(QuantizationError, match=r"sparsity must be in \[0, 1\)"):
        GQSAScheme(64, sparsity)


def test_bad_group_and_k():
    with pytest.raises(QuantizationError, match="group must be one of"):
        GQSAScheme(48, 0.5)
    with pytest.raises(QuantizationError, match="not a multiple of the GQSA group 64"):
        gqsa_quantize(_weight(k=96), GQSAScheme(64, 0.5))


def _valid():
    return gqsa_quantize(_weight(n=4, k=256), GQSAScheme(32, 0.5))


def _with(qw, **arrays):
    fields = {name: getattr(qw, name).copy() for name in ("indptr", "indices", "blocks", "scales")}
    fields.update(arrays)
    return GQSAWeight(scheme=qw.scheme, shape=qw.shape, **fields)


def test_malformed_bsr_is_rejected():
    qw = _valid()
    bad = qw.indices.copy()
    bad[3] = 8  # K / g = 8 blocks: index 8 is out of range
    with pytest.raises(QuantizationError, match="index 8 at position 3 is outside"):
        _with(qw, indices=bad)
    bad = qw.indices.copy()
    bad[[0, 1]] = bad[[1, 0]]
    with pytest.raises(QuantizationError, match="row 0 are not strictly increasing"):
        _with(qw, indices=bad)
    bad = qw.indices.copy()
    bad[5] = bad[4]  # a duplicate in row 1
    with pytest.raises(QuantizationError, match="row 1 are not strictly increasing"):
        _with(qw, indices=bad)
    ptr = qw.indptr.copy()
    ptr[2] = ptr[1] - 1
    with pytest.raises(QuantizationError, match="never decrease"):
        _with(qw, indptr=ptr)
    with pytest.raises(QuantizationError, match="scales must be a float16"):
        _with(qw, scales=qw.scales.astype(np.float32))
    with pytest.raises(QuantizationError, match="indices must be a int32 array of shape"):
        _with(qw, indices=qw.indices[:-1])


def test_refit_lowers_output_error_on_correlated_inputs():
    from lowbit_tvm.quant.gqsa import refit_kept

    rng = np.random.default_rng(3)
    k = 128
    mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)
    x = rng.standard_normal((256, k)) @ mix  # correlated input channels
    w = rng.standard_normal((16, k))
    scheme = GQSAScheme(16, 0.5, "row", "wanda")
    mask = keep_mask(w, scheme, x)
    plain = gqsa_dequantize(gqsa_quantize(w, scheme, x))
    refit = gqsa_dequantize(gqsa_quantize(refit_kept(w, mask, x, 16), scheme, mask=mask))
    err = [np.linalg.norm(x @ (w - v).T) for v in (plain, refit)]
    assert err[1] < 0.8 * err[0], err
    assert (refit.reshape(16, -1, 16)[~mask] == 0).all()
