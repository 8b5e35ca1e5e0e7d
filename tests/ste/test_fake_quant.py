"""fake_quantize: forward == the integer quantize/dequantize bit for bit; backward == the documented estimators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax import ste
from qjax.hardware import quantize_input
from qjax._src.rounding import MODES
from qjax._src.dtypes import as_qdtype


def f32_scales():
    return st.floats(2.0**-13, 10.0, width=32)

DTYPES = ["quint8", "qint8", "qint32"]


@settings(max_examples=60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), per_channel=st.booleans(),
       est=st.sampled_from(["ste", "clipped", "lsq", "lsq_plus"]))
def test_forward_is_the_integer_path(data, dtype, per_channel, est):
    dt = as_qdtype(dtype)
    c = 3
    x = np.asarray(data.draw(st.lists(st.floats(-300, 300, width=32), min_size=4 * c, max_size=4 * c)),
                   np.float32).reshape(4, c)
    if per_channel:
        s = np.asarray(data.draw(st.lists(f32_scales(), min_size=c, max_size=c)), np.float32)
        z = np.asarray(data.draw(st.lists(st.integers(max(dt.qmin, -1000), min(dt.qmax, 1000)), min_size=c,
                                          max_size=c)), np.int32)
        axis = 1
    else:
        s = np.float32(data.draw(f32_scales()))
        z = np.int32(data.draw(st.integers(max(dt.qmin, -1000), min(dt.qmax, 1000))))
        axis = None
    want = qjax.dequantize(qjax.quantize(x, s, z, dt, axis=axis))
    got = jax.jit(lambda x, s, z: ste.fake_quantize(x, s, z, dt, axis=axis, estimator=est))(x, s, z.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("mode", [m for m in MODES if m != "stochastic"])
def test_hardware_rounding_forward_matches_hardware_input_rule(mode):
    from qjax.hardware import HardwareSpec

    x = jnp.asarray(np.arange(-40, 40, dtype=np.float32) * 0.125)  # many exact ties at s = 0.25
    got = ste.fake_quantize(x, 0.25, 10.0, "quint8", rounding=mode)
    q = quantize_input(x, dict(scale=jnp.float32(0.25), zero_point=jnp.int32(10)), spec=HardwareSpec(
        quantize_rounding=mode))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(qjax.dequantize(q)))


def test_estimator_gradients_match_the_formulas():
    s, z = 0.5, 3.0  # quint8: representable x in [(0-3)*0.5, (255-3)*0.5] = [-1.5, 126]
    x = jnp.asarray([-4.0, -1.5, 0.3, 0.75, 10.1, 126.0, 200.0], jnp.float32)
    g = jnp.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], jnp.float32)
    inside = np.array([0, 1, 1, 1, 1, 1, 0], bool)

    def grads(est):
        f = lambda x, s, z: jnp.sum(ste.fake_quantize(x, s, z, "quint8", estimator=est) * g)
        return [np.asarray(v) for v in jax.grad(f, argnums=(0, 1, 2))(x, jnp.float32(s), jnp.float32(z))]

    dx, ds, dz = grads("ste")
    assert dx.tolist() == g.tolist() and ds == 0 and dz == 0
    dx, ds, dz = grads("clipped")
    assert dx.tolist() == np.where(inside, g, 0).tolist() and ds == 0
    xh = np.asarray(ste.fake_quantize(x, s, z, "quint8"))
    per = np.where(inside, (xh - np.asarray(x)) / s, np.where(np.asarray(x) < 0, 0 - z, 255 - z))
    dx, ds, dz = grads(ste.LSQ(grad_scale=None))
    np.testing.assert_allclose(ds, np.sum(np.asarray(g) * per), rtol=1e-6)
    assert dz == 0
    dx, ds, dz = grads(ste.LSQPlus(grad_scale=None))
    np.testing.assert_allclose(dz, np.sum(np.where(inside, 0, -np.asarray(g) * s)), rtol=1e-6)
    _, ds_auto, _ = grads(ste.LSQ())
    np.testing.assert_allclose(ds_auto, ds / np.sqrt(x.size * 255), rtol=1e-6)


def test_scale_and_zero_point_gradients_equal_finite_differences_where_smooth():
    """Outside the range x̂ = (qmax - z)·s is smooth in s and z: LSQ/LSQ+ give its exact derivative."""
    x = jnp.asarray([500.0, 600.0, -90.0], jnp.float32)  # all clamped for s=0.5, z=100
    f = lambda s, z: jnp.sum(ste.fake_quantize(x, s, z, "quint8", estimator=ste.LSQPlus(grad_scale=None)))
    ds, dz = jax.grad(f, argnums=(0, 1))(jnp.float32(0.5), jnp.float32(100.0))
    h = 1e-3
    fd_s = (f(0.5 + h, 100.0) - f(0.5 - h, 100.0)) / (2 * h)
    np.testing.assert_allclose(float(ds), float(fd_s), rtol=1e-3)
    assert float(dz) == pytest.approx(-3 * 0.5)  # z is rounded in the forward pass: its FD is 0, LSQ+ uses -s


@pytest.mark.torch
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_gradients_match_torch_learnable_fake_quantize(per_channel):
    import torch

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 5, 6)) * 3).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    if per_channel:
        s = np.asarray([0.02, 0.05, 0.011, 0.03, 0.04], np.float32)
        z = np.asarray([3.0, 0.0, 120.0, 250.0, 64.0], np.float32)
    else:
        s, z = np.asarray([0.031], np.float32), np.asarray([77.0], np.float32)
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    if per_channel:
        fq = _LearnableFakeQuantize(MovingAveragePerChannelMinMaxObserver, 0, 255, channel_len=5,
                                    use_grad_scaling=True, ch_axis=1, qscheme=torch.per_channel_affine)
    else:
        fq = _LearnableFakeQuantize(MovingAverageMinMaxObserver, 0, 255, use_grad_scaling=True)
    fq.enable_param_learning()  # no observer: the scale and zero point are parameters
    with torch.no_grad():
        fq.scale.copy_(torch.tensor(s))
        fq.zero_point.copy_(torch.tensor(z))
    xt = torch.tensor(x, requires_grad=True)
    y = fq(xt)
    y.backward(torch.tensor(gy))
    st_, zt = fq.scale, fq.zero_point
    axis = 1 if per_channel else None
    f = lambda x, s, z: ste.fake_quantize(x, s if per_channel else s[0], z if per_channel else z[0], "quint8",
                                           axis=axis, estimator=ste.LSQPlus())
    out, vjp = jax.vjp(f, x, s, z)
    dx, ds, dz = vjp(gy)
    np.testing.assert_array_equal(np.asarray(out), y.detach().numpy())
    np.testing.assert_array_equal(np.asarray(dx), xt.grad.numpy())
    # float sums in a different order: the per-element terms are identical, the totals agree to rounding
    np.testing.assert_allclose(np.asarray(ds).reshape(-1), st_.grad.numpy(), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dz).reshape(-1), zt.grad.numpy(), rtol=2e-5, atol=1e-7)


def test_transformations():
    x = jnp.linspace(-3, 3, 24, dtype=jnp.float32).reshape(4, 6)
    f = lambda x, s: ste.fake_quantize(x, s, 128.0, "quint8")
    ref = f(x, 0.02)
    np.testing.assert_array_equal(np.asarray(jax.vmap(f, in_axes=(0, None))(x, 0.02)), np.asarray(ref))
    loss = lambda s: jnp.sum(f(x, s) ** 2)
    v, g = jax.value_and_grad(loss)(jnp.float32(0.02))
    v2, g2 = jax.jit(jax.value_and_grad(jax.checkpoint(loss)))(jnp.float32(0.02))
    # the fake-quantized values are identical; the float loss sum may be reordered by jit
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.checkpoint(f))(x, 0.02)), np.asarray(ref))
    np.testing.assert_allclose([float(v2), float(g2)], [float(v), float(g)], rtol=1e-6)
    xb = x.astype(jnp.bfloat16)  # bf16 inputs are read as float32
    np.testing.assert_array_equal(np.asarray(f(xb, 0.02)), np.asarray(f(xb.astype(jnp.float32), 0.02)))
