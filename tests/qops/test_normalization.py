"""Quantized layer_norm / group_norm / instance_norm vs torch 2.13 (qjax.qops.normalization).

Every torch comparison asserts 0 mismatches; each data set is also shown to catch a plausible wrong
rule (a numpy model of the kernel with one step changed must disagree with torch on it).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import qjax
from qjax._src.qops import normalization as qn
from qjax._src.qops.paths import CHANNELS_LAST, CONTIGUOUS

from .. import torch_ref

pytestmark = pytest.mark.torch

F, D = np.float32, np.float64


# -- the double-precision 1/std: numpy's float64 is IEEE double, as the kernel's C++ double is --------------


def test_inv_std_double_is_the_kernels_double_arithmetic():
    rng = np.random.default_rng(0)
    n = 16384  # one padded size: one compilation for all eps
    t = np.concatenate([np.zeros(4, F), (10.0 ** rng.uniform(-14, 7, n // 2)).astype(F),
                        (rng.integers(0, 2**16, n // 2 - 4) * F(2.0**-18)).astype(F)])
    wrong = 0
    for eps in (1e-5, 1e-6, 1e-12, 0.1, 3.0):
        xs = F(10.0 ** rng.uniform(-4, 0))
        want = (D(xs) / np.sqrt(D(t) + eps)).astype(F)
        got = np.asarray(qn.inv_std_double(t, xs, eps))
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), eps
        wrong += int((xs / np.sqrt(t + F(eps)) != want).sum())  # float32 arithmetic: a wrong rule
    assert wrong > 0


# -- a numpy model of the kernel, only to show the data can tell rules apart --------------------------------


def _np_stats(q2, xs, zx, eps, fused_var=True):
    n = q2.shape[-1]
    s = q2.astype(np.int64).sum(-1).astype(F)
    ss = (q2.astype(np.int64) ** 2).sum(-1).astype(F)
    ms = (s / F(n)).astype(F)
    mean = (ms - F(zx)).astype(F)
    ssn = (ss / F(n)).astype(F)
    var = (D(ssn) - D(ms) * D(ms)).astype(F) if fused_var else (ssn - (ms * ms).astype(F)).astype(F)
    t = ((np.maximum(var, F(0)) * F(xs)).astype(F) * F(xs)).astype(F)
    return mean, (D(F(xs)) / np.sqrt(D(t) + eps)).astype(F)


def _np_quantize(y, ys, zy, qmin, qmax, vec):
    inv = (F(1) / F(ys)).astype(F)
    p = (y * inv).astype(F)
    rv = np.rint(np.minimum(p, F(2**31 - 128))).astype(np.int64) + zy
    rs = np.rint((p + F(zy)).astype(F)).astype(np.int64)
    return np.clip(np.where(vec, rv, rs), qmin, qmax)


def _np_layer_norm(q2, xs, zx, g, b, eps, ys, zy, dt, fused_var=True, fused_out=True):
    mean, inv = _np_stats(q2, xs, zx, eps, fused_var)
    d = ((q2.astype(np.int64) - zx).astype(F) - mean[:, None]).astype(F)
    p = (d * inv[:, None]).astype(F)
    y = qjax.float32.fma32_numpy(p, g, b) if fused_out else ((p * g).astype(F) + b).astype(F)
    vec = np.arange(q2.shape[-1]) < q2.shape[-1] // 32 * 32
    return _np_quantize(y, ys, zy, dt.qmin, dt.qmax, vec)


def _tie_seeking_beta(q2, xs, zx, g, eps, ys, rng):
    """beta with ``fl32(p * g) + beta`` exactly on an output rounding midpoint a few steps from 0: the
    unfused sum is a tie, the fused one carries the product's rounding error (large against the small
    result) off it."""
    mean, inv = _np_stats(q2, xs, zx, eps)
    p = ((((q2.astype(np.int64) - zx).astype(F) - mean[:, None]).astype(F)) * inv[:, None]).astype(F)
    pg = (p * g).astype(F)[0]
    k = rng.integers(-3, 3, pg.shape).astype(F)
    return ((k + F(0.5)) * F(ys) - pg).astype(F)


# -- layer_norm ---------------------------------------------------------------------------------------------

LN_SHAPE = (4, 45)  # 32 elements on the vector rule, 13 on quantize_val


@st.composite
def _ln_case(draw):
    dt = draw(st.sampled_from([qjax.quint8, qjax.qint8]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    zx = int(rng.integers(dt.qmin, dt.qmax + 1))
    spread = draw(st.sampled_from([1, 4, 256]))  # narrow rows: tiny variances, eps dominates
    q = np.clip(zx + rng.integers(-spread, spread + 1, LN_SHAPE), dt.qmin, dt.qmax).astype(dt.storage)
    xs = float(F(np.exp(rng.uniform(-6, -1))))
    ys = float(F(2.0 ** rng.integers(-9, -3)))  # power-of-two output scales: exact midpoints exist
    zy = int(rng.integers(dt.qmin, dt.qmax + 1))
    g = (rng.normal(size=LN_SHAPE[1:]) * 2).astype(F)
    eps = draw(st.sampled_from([1e-5, 1e-6]))
    b = (_tie_seeking_beta(q, xs, zx, g, eps, ys, rng) if draw(st.booleans())
         else rng.normal(size=LN_SHAPE[1:]).astype(F))
    return dt, q, xs, zx, g, b, eps, ys, zy


def _torch_layer_norm(q, xs, zx, g, b, eps, ys, zy, shape=None):
    x = torch_ref.qtensor(q, xs, zx)
    w = None if g is None else torch.from_numpy(np.asarray(g))
    bb = None if b is None else torch.from_numpy(np.asarray(b))
    shape = list(shape or q.shape[-1:])
    return torch.ops.quantized.layer_norm(x, shape, w, bb, eps, ys, zy).int_repr().numpy()


@settings(max_examples=8)
@given(_ln_case())
def test_layer_norm_matches_torch(case):
    dt, q, xs, zx, g, b, eps, ys, zy = case
    torch.set_num_threads(1)
    got = qn.layer_norm(qjax.QArray(q, xs, zx, dt), (q.shape[-1],), g, b, eps, ys, zy)
    want = _torch_layer_norm(q, xs, zx, g, b, eps, ys, zy)
    assert got.dtype == dt and float(got.scale) == F(ys) and int(got.zero_point) == zy
    np.testing.assert_array_equal(np.asarray(got.values), want)


def test_layer_norm_data_catches_wrong_rules():
    """Tie-seeking data on which torch, qjax and the numpy model agree, and an unfused affine or an
    unfused variance disagree with torch."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    dt, eps, ys, zy = qjax.quint8, 1e-5, 2.0**-7, 128
    fails_out = fails_var = 0
    for _ in range(6):
        zx = int(rng.integers(0, 256))
        q = rng.integers(0, 256, LN_SHAPE).astype(np.uint8)
        xs = float(F(np.exp(rng.uniform(-6, -1))))
        g = (rng.normal(size=LN_SHAPE[1:]) * 2).astype(F)
        b = _tie_seeking_beta(q, xs, zx, g, eps, ys, rng)
        want = _torch_layer_norm(q, xs, zx, g, b, eps, ys, zy)
        got = np.asarray(qn.layer_norm(qjax.QArray(q, xs, zx, dt), (45,), g, b, eps, ys, zy).values)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(_np_layer_norm(q, xs, zx, g, b, eps, ys, zy, dt), want)
        fails_out += int((_np_layer_norm(q, xs, zx, g, b, eps, ys, zy, dt, fused_out=False) != want).sum())
    # the variance's contraction shows where var << mean**2 (rows of 250s and 251s: cancellation)
    q = (250 + rng.integers(0, 2, (16, 45))).astype(np.uint8)
    g, b = np.ones(45, F), np.zeros(45, F)
    for xs in (0.05, 0.013):
        want = _torch_layer_norm(q, xs, 3, g, b, eps, 2.0**-6, zy)
        got = np.asarray(qn.layer_norm(qjax.QArray(q, xs, 3, dt), (45,), g, b, eps, 2.0**-6, zy).values)
        np.testing.assert_array_equal(got, want)
        fails_var += int((_np_layer_norm(q, xs, 3, g, b, eps, 2.0**-6, zy, dt, fused_var=False) != want).sum())
    assert fails_out > 0 and fails_var > 0, (fails_out, fails_var)


def test_layer_norm_multi_dim_and_no_affine():
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    q = rng.integers(-128, 128, (4, 3, 15)).astype(np.int8)  # 45 elements per row, as LN_SHAPE
    got = qn.layer_norm(qjax.QArray(q, 0.02, -5, qjax.qint8), (3, 15), None, None, 1e-5, 0.01, 3)
    want = _torch_layer_norm(q, 0.02, -5, None, None, 1e-5, 0.01, 3, shape=(3, 15))
    np.testing.assert_array_equal(np.asarray(got.values), want)


# -- group_norm / instance_norm -----------------------------------------------------------------------------

# (shape, groups, memory format, dtype): the contiguous kernel (35 positions per channel: one vector and a
# partial one), the NHWC kernel's impl-1 (40 channels per group: 32 on vectors, 8 scalar), InstanceNorm3d
# (contiguous) and 2d channels-last (one channel per group: all scalar); the NHWC impl-2 (float sums) is
# test_nhwc_float_sums_are_needed
GN_CASES = [((2, 6, 5, 7), 3, CONTIGUOUS, qjax.quint8), ((2, 40, 3, 5), 1, CHANNELS_LAST, qjax.qint8),
            ((1, 3, 2, 4, 5), None, CONTIGUOUS, qjax.qint8),
            ((2, 4, 6, 6), None, CHANNELS_LAST, qjax.quint8)]


def _gn_data(rng, shape, dt):
    zx = int(rng.integers(dt.qmin, dt.qmax + 1))
    spread = int(rng.choice([2, 256]))
    q = np.clip(zx + rng.integers(-spread, spread + 1, shape), dt.qmin, dt.qmax).astype(dt.storage)
    xs = float(F(np.exp(rng.uniform(-6, -1))))
    ys = float(F(2.0 ** rng.integers(-9, -3)))
    zy = int(rng.integers(dt.qmin, dt.qmax + 1))
    g = (rng.normal(size=shape[1]) * 2).astype(F)
    b = (rng.integers(-64, 64, shape[1]) * F(ys) * F(0.5)).astype(F)  # multiples of ys/2: ties
    return q, xs, zx, g, b, ys, zy


def _torch_group_norm(q, groups, fmt, xs, zx, g, b, eps, ys, zy):
    x = torch_ref.qtensor(q, xs, zx)
    if fmt == CHANNELS_LAST:
        x = x.contiguous(memory_format=torch.channels_last)
    w, bb = torch.from_numpy(g), torch.from_numpy(b)
    if groups is None:
        y = torch.ops.quantized.instance_norm(x, w, bb, eps, ys, zy)
    else:
        y = torch.ops.quantized.group_norm(x, groups, w, bb, eps, ys, zy)
    return y.int_repr().numpy()


def _qjax_group_norm(q, groups, fmt, dt, xs, zx, g, b, eps, ys, zy):
    x = qjax.QArray(q, xs, zx, dt)
    if groups is None:
        return np.asarray(qn.instance_norm(x, g, b, eps, ys, zy, memory_format=fmt).values)
    return np.asarray(qn.group_norm(x, groups, g, b, eps, ys, zy, memory_format=fmt).values)


@pytest.mark.parametrize("shape,groups,fmt,dt", GN_CASES)
@settings(max_examples=2)
@given(seed=st.integers(0, 2**31 - 1))
def test_group_and_instance_norm_match_torch(shape, groups, fmt, dt, seed):
    torch.set_num_threads(1)
    q, xs, zx, g, b, ys, zy = _gn_data(np.random.default_rng(seed), shape, dt)
    want = _torch_group_norm(q, groups, fmt, xs, zx, g, b, 1e-5, ys, zy)
    np.testing.assert_array_equal(_qjax_group_norm(q, groups, fmt, dt, xs, zx, g, b, 1e-5, ys, zy), want)


def test_nhwc_float_sums_are_needed():
    """On impl-2 data, torch's float running sums of squares differ from the exact integer sums (a wrong
    rule: impl-1's statistics), and that changes outputs."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    shape, dt = (1, 36, 16, 32), qjax.quint8
    q = rng.integers(250, 256, shape).astype(np.uint8)  # inexact float sums of squares; var << mean**2
    xs, zx, ys, zy = 0.05, 3, 2.0**-5, 128
    g, b = np.ones(36, F), np.zeros(36, F)
    want = _torch_group_norm(q, 2, CHANNELS_LAST, xs, zx, g, b, 1e-5, ys, zy)
    np.testing.assert_array_equal(_qjax_group_norm(q, 2, CHANNELS_LAST, dt, xs, zx, g, b, 1e-5, ys, zy), want)
    # the wrong rule: the same NHWC kernel with exact integer sums (impl-1's statistics)
    groups = q.reshape(1, 2, 18 * 16 * 32)  # contiguous groups: the integer sums do not depend on the order
    mean, inv = qn.row_stats(*qn._integer_sums(groups), 18 * 16 * 32, xs, zx, 1e-5)
    yi = np.float32(1) / np.float32(ys)
    wrong = qn._nhwc_apply(q, 2, mean, inv, g, b, zx, yi, zy, dt.qmin, dt.qmax)
    assert (np.asarray(wrong) != want).sum() > 0


def test_refusals():
    x = qjax.QArray(np.zeros((1, 4, 32, 32), np.uint8), 0.1, 0, qjax.quint8)
    with pytest.raises(qjax.QuantizationError, match="threads"):
        qn.group_norm(x, 2, None, None, 1e-5, 0.1, 0, memory_format=CHANNELS_LAST, threads=4)
    with pytest.raises(qjax.QuantizationError, match="divide"):
        qn.group_norm(x, 3, None, None, 1e-5, 0.1, 0)
    with pytest.raises(qjax.QuantizationError, match="not modelled"):
        qn.layer_norm(qjax.QArray(np.zeros((1, 70000), np.uint8), 0.1, 0, qjax.quint8), (70000,))
    with pytest.raises(qjax.QuantizationError, match="trailing"):
        qn.layer_norm(x, (4, 32))


def test_sum_of_squares_is_exact_up_to_the_longest_row():
    """The exact float32 sum of squares (torch's int64 hsum_sq, then float) at MAX_ROW elements of 255 and of
    mixed values: its high part times 256 exceeds int32 there (computed in float, where it is exact)."""
    import jax.numpy as jnp

    from qjax._src.qops.normalization import MAX_ROW, _exact_float_sum_sq

    rng = np.random.default_rng(0)
    rows = np.stack([np.full(MAX_ROW, 255), rng.integers(180, 256, MAX_ROW)]).astype(np.uint8)
    want = np.array([np.float32(int((r.astype(np.int64) ** 2).sum())) for r in rows])
    np.testing.assert_array_equal(np.asarray(_exact_float_sum_sq(jnp.asarray(rows))), want)
