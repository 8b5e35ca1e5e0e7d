"""AdaRound on a layer-reconstruction task: lower error than round-to-nearest; hard weights drive the integer path."""

import jax.numpy as jnp
import numpy as np

import qjax
from qjax.ste import adaround


def test_adaround_beats_round_to_nearest():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 32)).astype(np.float32) @ rng.standard_normal((32, 32)).astype(np.float32) * 0.3
    w = (rng.standard_normal((16, 32)) * 0.1).astype(np.float32)
    s = (np.abs(w).max(1) / 7).astype(np.float32)  # a coarse 4-bit-like grid makes rounding matter
    forward = lambda w, x: x @ w.T
    v, recs = adaround.reconstruct(w, s, np.zeros(16, np.int32), x, forward, steps=800, lr=3e-2)
    hard = adaround.hard_weight(w, v, s, np.zeros(16, np.int32))
    nearest = qjax.quantize(w, s, np.zeros(16, np.int32), qjax.qint8, axis=0)
    err = lambda q: float(np.mean((forward(np.asarray(qjax.dequantize(q)), x) - forward(w, x)) ** 2))
    e_ada, e_near = err(hard), err(nearest)
    print(f"layer reconstruction MSE: AdaRound {e_ada:.3g}, round-to-nearest {e_near:.3g}")
    assert e_ada < 0.8 * e_near, (e_ada, e_near)
    # every weight rounded to one of its two neighbours, and the choices converged (h(V) near 0 or 1)
    f = np.floor(w / s[:, None])
    assert np.all((np.asarray(hard.values) == f) | (np.asarray(hard.values) == f + 1))
    h = np.asarray(adaround.rectified_sigmoid(v))
    assert np.mean((h < 0.05) | (h > 0.95)) > 0.95
    assert recs.shape == (800,)
    # the integer path uses the chosen integers exactly
    xq = qjax.quantize(x[:4], 0.05, 128, qjax.quint8)
    y = qjax.linear(xq, hard, None, scale=0.1, zero_point=128)
    y2 = qjax.linear(xq, qjax.quantize(qjax.dequantize(hard), s, np.zeros(16, np.int32), qjax.qint8, axis=0), None,
                     scale=0.1, zero_point=128)
    np.testing.assert_array_equal(np.asarray(y.values), np.asarray(y2.values))


def test_init_v_reproduces_the_float_weights_and_regularizer_bounds():
    w = jnp.asarray([[0.31, -0.26, 0.05, 0.5]], jnp.float32)
    s = jnp.asarray([0.1], jnp.float32)
    v = adaround.init_v(w, s)
    soft = adaround.soft_weight(w, v, s, jnp.zeros(1, jnp.int32))
    np.testing.assert_allclose(np.asarray(soft), np.asarray(w), atol=2e-3)
    assert 0 <= float(adaround.regularizer(v, 2.0)) <= w.size
    assert float(adaround.beta_schedule(0, 100)) == 20.0 and float(adaround.beta_schedule(100, 100)) == 2.0


def test_hard_weight_per_tensor_and_float_zero_point():
    w = jnp.asarray([[0.31, -0.26], [0.05, 0.5]], jnp.float32)
    v = jnp.asarray([[1.0, -1.0], [-1.0, 1.0]], jnp.float32)
    hard = adaround.hard_weight(w, v, 0.1, 0.7)  # per-tensor scale, float zero point (rounds to 1)
    assert hard.axis is None and int(hard.zero_point) == 1
    assert np.asarray(hard.values).tolist() == [[5, -2], [1, 7]]
    soft = adaround.soft_weight(w, v * 100, 0.1, 0.7)
    np.testing.assert_allclose(np.asarray(soft), np.asarray(qjax.dequantize(hard)), atol=1e-6)


def test_adaround_low_bit_range_and_one_compilation():
    import pytest

    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    forward = lambda w, x: x @ w.T
    s = np.full(4, 0.02, np.float32)
    z = np.zeros(4, np.int32)
    w1 = (rng.standard_normal((4, 8)) * 0.3).astype(np.float32)  # far outside 4 bits at this scale
    w2 = (rng.standard_normal((4, 8)) * 0.3).astype(np.float32)
    adaround._reconstruct._clear_cache()
    v1, _ = adaround.reconstruct(w1, s, z, x, forward, steps=20, quant_min=-8, quant_max=7)
    adaround.reconstruct(w2, s, z, x, forward, steps=20, quant_min=-8, quant_max=7)
    assert adaround._reconstruct._cache_size() == 1  # same forward and shapes: compiled once
    hard = np.asarray(adaround.hard_weight(w1, v1, s, z, quant_min=-8, quant_max=7).values)
    assert hard.min() >= -8 and hard.max() <= 7 and (hard == 7).any() and (hard == -8).any()
    soft = np.asarray(adaround.soft_weight(w1, v1, s, z, quant_min=-8, quant_max=7))
    assert soft.min() >= -8 * 0.02 - 1e-7 and soft.max() <= 7 * 0.02 + 1e-7
    with pytest.raises(ValueError, match="quant_min"):
        adaround.hard_weight(w1, v1, s, z, quant_min=-200, quant_max=7)
