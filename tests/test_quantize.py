"""quantize / dequantize against torch 2.13 (per-tensor fused FMA rule, per-channel unfused rule)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax import QuantizationError

from . import torch_ref

DTYPES = [qjax.quint8, qjax.qint8, qjax.qint32]


def tie_data(rng, n, scale, dtype):
    """Half the values sit exactly on x*inv = k + 0.5 (where fused and unfused rounding differ)."""
    k = rng.integers(-300, 300, size=n).astype(np.float64)
    x = np.where(rng.random(n) < 0.5, (k + 0.5) * np.float32(scale), rng.normal(0, scale * 100, size=n))
    if dtype == qjax.qint32:
        x = x * 1000
    return x.astype(np.float32)


def draw_qparams(rng, dtype, channels=None):
    lo, hi = (dtype.qmin, dtype.qmax) if dtype != qjax.qint32 else (-1000, 1000)
    if channels is None:
        return float(np.exp(rng.uniform(-9, 1))), int(rng.integers(lo, hi + 1))
    # per-channel scales as observers make them: float32 values (torch stores them as double;
    # per-channel dequantize multiplies by that double, see qjax.quantize's docstring)
    scales = np.exp(rng.uniform(-9, 1, size=channels)).astype(np.float32).astype(np.float64)
    return scales, rng.integers(lo, hi + 1, size=channels)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_quantize_per_tensor_matches_torch_on_ties(dtype):
    rng = np.random.default_rng(10)
    total = 0
    # one compiled function for the traced-qparams case: inputs padded to one length (the padding, zeros, is
    # compared too); the compile-time-constant case compiles per draw, so it runs on the first 12 draws only
    traced = jax.jit(lambda x, s, z: qjax.quantize(x, s, z, dtype).values)
    for i in range(40):
        n = int(rng.integers(1, 4000))
        scale, zp = draw_qparams(rng, dtype)
        x = np.zeros(4000, np.float32)
        x[:n] = tie_data(rng, n, scale, dtype)
        want = torch_ref.quantize(x, scale, zp, dtype.name)
        np.testing.assert_array_equal(np.asarray(traced(x, np.float32(scale), np.int32(zp))), want)
        if i < 12:
            got_const = jax.jit(lambda x: qjax.quantize(x, scale, zp, dtype).values)(x[:n])
            np.testing.assert_array_equal(np.asarray(got_const), want[:n])
        total += n
    assert total > 50_000


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_per_channel_matches_torch_on_ties(dtype, axis):
    rng = np.random.default_rng(11 + axis)
    for _ in range(15):
        c = int(rng.integers(1, 6))
        n = int(rng.integers(1, 700))
        scale, zp = draw_qparams(rng, dtype, c)
        x = np.stack([tie_data(rng, n, s, dtype) for s in scale], axis=axis)
        want = torch_ref.quantize(x, scale, zp, dtype.name, axis=axis)
        got = qjax.quantize(x, scale, zp, dtype, axis=axis)
        np.testing.assert_array_equal(np.asarray(got.values), want)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_nan_inf_and_huge(dtype, per_channel):
    x = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0, 1e-30, 2.5, -2.5], np.float32)
    if per_channel:
        x2 = np.stack([x, x])
        want = torch_ref.quantize(x2, [0.5, 0.25], [3, 1], dtype.name, axis=0)
        got = qjax.quantize(x2, np.array([0.5, 0.25]), np.array([3, 1]), dtype, axis=0).values
    else:
        want = torch_ref.quantize(x, 0.5, 3, dtype.name)
        got = qjax.quantize(x, 0.5, 3, dtype).values
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.torch
@settings(max_examples=30)
@given(
    dtype=st.sampled_from(DTYPES),
    per_channel=st.booleans(),
    shape=st.sampled_from([(1,), (7,), (8,), (9,), (3, 33), (2, 3, 17), (64,), (5, 1000)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_dequantize_roundtrip_matches_torch(dtype, per_channel, shape, seed):
    rng = np.random.default_rng(seed)
    axis = len(shape) - 1 if per_channel else None
    scale, zp = draw_qparams(rng, dtype, shape[axis] if per_channel else None)
    x = tie_data(rng, int(np.prod(shape)), float(np.min(scale)), dtype).reshape(shape)
    q = qjax.quantize(x, scale, zp, dtype, axis=axis)
    want = torch_ref.quantize(x, scale, zp, dtype.name, axis=axis)
    np.testing.assert_array_equal(np.asarray(q.values), want)
    deq = np.asarray(qjax.dequantize(q))
    want_deq = torch_ref.dequantize(want, scale, zp, axis)
    np.testing.assert_array_equal(deq.view(np.uint32), want_deq.view(np.uint32))


def test_qarray_is_a_pytree_through_jit_and_vmap():
    x = jnp.linspace(-1, 1, 12, dtype=jnp.float32).reshape(3, 4)
    q = qjax.quantize(x, 0.01, 10, qjax.quint8)
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert len(leaves) == 4  # values, scale, zero_point and scale64 (the double 0.01 is not float32-valued)
    assert len(jax.tree_util.tree_leaves(qjax.quantize(x, np.float32(0.01), 10, qjax.quint8))) == 3
    q2 = jax.jit(lambda q: q)(q)
    assert isinstance(q2, qjax.QArray) and q2.dtype == qjax.quint8
    np.testing.assert_array_equal(np.asarray(q2.values), np.asarray(q.values))
    rows = jax.vmap(lambda r: qjax.quantize(r, 0.01, 10, qjax.quint8).values)(x)
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(q.values))
    # vmap over per-row scales (batched leaves) matches the per-channel quantize
    scales = jnp.array([0.01, 0.02, 0.03], jnp.float32)
    per_row = jax.vmap(lambda r, s: qjax.quantize(r, s, 10, qjax.quint8).values)(x, scales)
    pc = qjax.quantize(x, scales, jnp.array([10, 10, 10]), qjax.quint8, axis=0).values
    # vmapped per-tensor uses the fused rule, per-channel the unfused one; on this data they agree
    np.testing.assert_array_equal(np.asarray(per_row), np.asarray(pc))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale=0.0, zero_point=0), "scale must be > 0"),
        (dict(scale=-1.0, zero_point=0), "scale must be > 0"),
        (dict(scale=float("nan"), zero_point=0), "scale must be finite"),
        (dict(scale=float("inf"), zero_point=0), "scale must be finite"),
        (dict(scale=1e-50, zero_point=0), "scale must be > 0"),
        (dict(scale=0.1, zero_point=256), "outside the range of quint8"),
        (dict(scale=0.1, zero_point=-1), "outside the range of quint8"),
        (dict(scale=0.1, zero_point=1.5), "zero_point must be an integer"),
        (dict(scale=[0.1, 0.2], zero_point=[0, 0]), "per-tensor quantize"),
    ],
)
def test_quantize_rejects_bad_qparams(kwargs, match):
    with pytest.raises(QuantizationError, match=match):
        qjax.quantize(np.zeros(4, np.float32), dtype=qjax.quint8, **kwargs)


def test_quantize_rejects_bad_dtype_and_axis():
    with pytest.raises(TypeError, match="dtype='float16' is not a quantized dtype"):
        qjax.quantize(np.zeros(4, np.float32), 0.1, 0, "float16")
    with pytest.raises(TypeError, match="x must be a float array"):
        qjax.quantize(np.zeros(4, np.int32), 0.1, 0, qjax.quint8)
    with pytest.raises(QuantizationError, match="axis=2 is out of range"):
        qjax.quantize(np.zeros((2, 3), np.float32), np.ones(3), np.zeros(3, int), qjax.quint8, axis=2)
    with pytest.raises(QuantizationError, match=r"must have shape \(3,\)"):
        qjax.quantize(np.zeros((2, 3), np.float32), np.ones(2), np.zeros(2, int), qjax.quint8, axis=1)


def test_qarray_rejects_wrong_storage():
    with pytest.raises(TypeError, match="values must have dtype uint8 for quint8"):
        qjax.QArray(np.zeros(3, np.int8), 0.1, 0, qjax.quint8)
