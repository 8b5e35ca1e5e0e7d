"""ste.conv / ste.linear: forward == the integer path on every engine and hardware spec; gradients; a toy QAT run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax import hardware as hw
from qjax import ste

ENGINES = ["fbgemm", "qnnpack", "onednn", "x86", "reference", "gemmlowp", "tflite_single", "dyadic8",
           "gemmlowp:acc=16,overflow=wrap,rounding=half_even"]


def _reference(kind, x, w, b, sx, zx, sw, zw, sy, zy, engine, relu, geom=None):
    """The integer path, called directly (no STE machinery)."""
    per_channel = np.ndim(sw) == 1
    w_axis = 0 if per_channel else None
    if engine.split(":")[0] in hw.PRESETS:
        spec = hw.get_spec(engine)
        xq = qjax.quantize(x, sx, zx, qjax.quint8)
        wq = qjax.quantize(w, sw, zw, qjax.qint8, axis=w_axis)
        bq, m0, sh, _ = hw.derive_layer(np.float32(sx), np.asarray(sw, np.float32), np.float32(sy), b, w.shape[0], spec)
        p = dict(weight=wq, bias_q=None if bq is None else jnp.asarray(bq), m0=jnp.asarray(m0), shift=jnp.asarray(sh),
                 scale=jnp.float32(sy), zero_point=jnp.int32(zy))
        if kind == "conv":
            return qjax.dequantize(hw.conv_integer(xq, p, spec=spec, geometry=geom, relu=relu))
        return qjax.dequantize(hw.linear_integer(xq, p, spec=spec, relu=relu))
    xq = qjax.quantize(x, sx, zx, qjax.quint8)
    wq = qjax.quantize(w, sw, zw, qjax.qint8, axis=w_axis)
    if kind == "conv":
        return qjax.dequantize(qjax.conv(xq, wq, b, scale=sy, zero_point=zy, stride=geom.strides, padding=geom.padding,
                                         dilation=geom.dilation, groups=geom.groups, relu=relu, engine=engine))
    return qjax.dequantize(qjax.linear(xq, wq, b, scale=sy, zero_point=zy, relu=relu, engine=engine))


@settings(max_examples=12)
@given(engine=st.sampled_from(ENGINES), seed=st.integers(0, 2**31), per_channel=st.booleans(), relu=st.booleans(),
       has_bias=st.booleans(), kind=st.sampled_from(["conv", "conv", "linear"]), groups=st.sampled_from([1, 2]))
def test_forward_equals_integer_path(engine, seed, per_channel, relu, has_bias, kind, groups):
    rng = np.random.default_rng(seed)
    c, o = 4, 6
    if kind == "conv":
        x = rng.standard_normal((2, c, 7, 6)).astype(np.float32)
        w = (rng.standard_normal((o, c // groups, 3, 3)) * 0.3).astype(np.float32)
    else:
        x = rng.standard_normal((3, 2, 16)).astype(np.float32)
        w = (rng.standard_normal((o, 16)) * 0.3).astype(np.float32)
        groups = 1
    sw = (np.abs(w).reshape(o, -1).max(1) / 127).astype(np.float32) if per_channel else \
        np.float32(np.abs(w).max() / 127)
    zw = np.zeros(o, np.int32) if per_channel else np.int32(0)
    b = (rng.standard_normal(o) * 0.2).astype(np.float32) if has_bias else None
    sx, zx = np.float32(rng.uniform(0.01, 0.03)), int(rng.integers(90, 160))
    sy, zy = np.float32(rng.uniform(0.03, 0.08)), int(rng.integers(60, 200))
    kw = dict(x_scale=sx, x_zero_point=float(zx), w_scale=sw, w_zero_point=np.asarray(zw, np.float32), scale=sy,
              zero_point=float(zy), relu=relu, engine=engine)
    if kind == "conv":
        geom = qjax._src.ops.conv_geometry(2, (1, 2), 1, 1, groups)
        got = jax.jit(lambda x, w, b: ste.conv(x, w, b, stride=(1, 2), padding=1, groups=groups, **kw))(x, w, b)
    else:
        geom = None
        got = jax.jit(lambda x, w, b: ste.linear(x, w, b, **kw))(x, w, b)
    want = _reference(kind, x, w, b, sx, zx, sw, zw, sy, zy, engine, relu, geom)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_linear_gradients_are_the_surrogate_formulas():
    """With STE everywhere and nothing clamped: dL/db = Σ c, dL/dx = c @ ŵ, dL/dw = cᵀ @ x̂."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 8)) * 0.3).astype(np.float32)
    w = (rng.standard_normal((4, 8)) * 0.2).astype(np.float32)
    b = np.zeros(4, np.float32)
    c = rng.standard_normal((5, 4)).astype(np.float32)
    kw = dict(x_scale=0.02, x_zero_point=128.0, w_scale=0.01, w_zero_point=0.0, scale=0.05, zero_point=128.0,
              estimator="ste")
    loss = lambda x, w, b: jnp.sum(ste.linear(x, w, b, **kw) * c)
    dx, dw, db = jax.grad(loss, argnums=(0, 1, 2))(x, w, b)
    xh = np.asarray(ste.fake_quantize(x, 0.02, 128.0, "quint8"))
    wh = np.asarray(ste.fake_quantize(w, 0.01, 0.0, "qint8"))
    np.testing.assert_allclose(np.asarray(db), c.sum(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dx), c @ wh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw), c.T @ xh, rtol=1e-5, atol=1e-6)


def test_transformations_on_conv():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    w = (rng.standard_normal((3, 2, 3, 3)) * 0.3).astype(np.float32)
    kw = dict(x_scale=0.02, x_zero_point=128.0, w_scale=0.01, w_zero_point=0.0, scale=0.05, zero_point=100.0)
    f = lambda x, w: ste.conv(x, w, None, **kw)
    ref = np.asarray(f(x, w))
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda xi: f(xi[None], w)[0])(x)), ref)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.checkpoint(f))(x, w)), ref)
    g1 = jax.grad(lambda w: jnp.sum(f(x, w) ** 2))(w)
    g2 = jax.jit(jax.grad(jax.checkpoint(lambda w: jnp.sum(f(x, w) ** 2))))(w)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-5, atol=1e-6)
    gh = jax.grad(lambda w: jnp.sum(ste.conv(x, w, None, engine="gemmlowp", **kw) ** 2))(w)
    assert np.isfinite(np.asarray(gh)).all() and np.abs(np.asarray(gh)).sum() > 0


def _toy_regression(learn_scale: bool, steps=200):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    w_true = (rng.standard_normal((8, 16)) * 0.3).astype(np.float32)
    y = x @ w_true.T
    params = dict(w=jnp.asarray(w_true + rng.standard_normal(w_true.shape).astype(np.float32) * 0.1),
                  sx=jnp.float32(0.2), sy=jnp.float32(0.2))  # coarse initial scales

    def loss(p):
        sx, sy = (p["sx"], p["sy"]) if learn_scale else (jax.lax.stop_gradient(p["sx"]), jax.lax.stop_gradient(p["sy"]))
        sw = jnp.max(jnp.abs(jax.lax.stop_gradient(p["w"]))) / 127
        out = ste.linear(x, p["w"], None, x_scale=sx, x_zero_point=128.0, w_scale=sw, w_zero_point=0.0, scale=sy,
                         zero_point=128.0, estimator="lsq")
        return jnp.mean((out - y) ** 2)

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        l, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, l

    for _ in range(steps):
        params, state, _ = step(params, state)
    return float(loss(params))


def test_toy_regression_learning_the_scale_lowers_the_loss():
    frozen, learned = _toy_regression(False), _toy_regression(True)
    print(f"toy regression after 200 steps: frozen scales {frozen:.4g}, learned (LSQ) {learned:.4g}")
    assert learned < 0.5 * frozen, (frozen, learned)


def test_bad_arguments_name_the_argument():
    x = np.zeros((1, 2, 4, 4), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    kw = dict(x_scale=0.1, x_zero_point=0.0, w_scale=0.1, w_zero_point=0.0, scale=0.1, zero_point=0.0)
    with pytest.raises(qjax.QuantizationError, match="x_scale"):
        ste.conv(x, w, None, **dict(kw, x_scale=-1.0))
    with pytest.raises(qjax.QuantizationError, match="w_scale"):
        ste.conv(x, w, None, **dict(kw, w_scale=float("nan")))
    with pytest.raises(ValueError, match="w_scale"):
        ste.conv(x, w, None, **dict(kw, w_scale=np.ones(5, np.float32)))
    with pytest.raises(ValueError, match="estimator"):
        ste.conv(x, w, None, estimator="lsq2", **kw)
    with pytest.raises(ValueError, match="engine"):
        ste.conv(x, w, None, engine="tpu", **kw)


def test_stochastic_hardware_requant_is_keyed_and_equals_the_integer_path():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    w = (rng.standard_normal((6, 16)) * 0.3).astype(np.float32)
    spec = hw.get_spec("tflite_single").replace(requant_rounding="stochastic", name="sr")
    sw = np.float32(np.abs(w).max() / 127)
    kw = dict(x_scale=np.float32(0.02), x_zero_point=128.0, w_scale=sw, w_zero_point=0.0, scale=np.float32(0.05),
              zero_point=100.0, engine=spec)
    with pytest.raises(ValueError, match="key"):
        ste.linear(x, w, None, **kw)
    k = jax.random.PRNGKey(3)
    y = ste.linear(x, w, None, key=k, **kw)
    xq = qjax.quantize(x, np.float32(0.02), 128, qjax.quint8)
    wq = qjax.quantize(w, sw, 0, qjax.qint8)
    _, m0, sh, _ = hw.derive_layer(np.float32(0.02), sw, np.float32(0.05), None, 6, spec)
    p = dict(weight=wq, bias_q=None, m0=jnp.asarray(m0), shift=jnp.asarray(sh), scale=jnp.float32(0.05),
             zero_point=jnp.int32(100))
    want = qjax.dequantize(hw.linear_integer(xq, p, spec=spec, relu=False, key=k))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    g = jax.grad(lambda w: jnp.sum(ste.linear(x, w, None, key=k, **kw)))(w)
    assert np.isfinite(np.asarray(g)).all()


def test_x86_linear_runs_fbgemm_like_torch():
    """torch's x86 engine dispatches convs only; its linear is always fbgemm (found where onednn differs)."""
    rng = np.random.default_rng(1)
    k, o = 16, 8
    for _ in range(40):
        x = rng.uniform(0, 4, (4096, k)).astype(np.float32)
        w = rng.normal(0, 0.3, (o, k)).astype(np.float32)
        b = rng.normal(0, 1, o).astype(np.float32)
        sx = np.float32(rng.uniform(0.001, 0.05))
        sw = (np.abs(w).max(1) / 127 * rng.uniform(0.5, 1.5, o)).astype(np.float32)
        sy = np.float32(rng.uniform(0.01, 0.5))
        xq = qjax.quantize(x, sx, 3, qjax.quint8)
        wq = qjax.quantize(w, sw, np.zeros(o, np.int32), qjax.qint8, axis=0)
        y_x86 = qjax.linear(xq, wq, b, scale=sy, zero_point=100, engine="x86")
        y_onednn = qjax.linear(xq, wq, b, scale=sy, zero_point=100, engine="onednn")
        if (np.asarray(y_x86.values) != np.asarray(y_onednn.values)).any():
            kw = dict(x_scale=sx, x_zero_point=3.0, w_scale=sw, w_zero_point=np.zeros(o, np.float32), scale=sy,
                      zero_point=100.0)
            got = ste.linear(x, w, b, engine="x86", **kw)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(qjax.dequantize(y_x86)))
            return
    pytest.fail("no input found where onednn and fbgemm linear differ")


def test_fake_quantize_shape_errors_and_rounding_mask():
    x = jnp.asarray([[126.6, 127.7, -128.4]], jnp.float32)
    with pytest.raises(ValueError, match="zero_point"):
        ste.fake_quantize(x, jnp.ones(3), 0.0, "qint8", axis=1)
    with pytest.raises(ValueError, match="scale"):
        ste.fake_quantize(x, jnp.ones(2), jnp.zeros(2), "qint8", axis=1)
    # floor rounding: 127.7 floors to 127 (not clamped) so its gradient passes; -128.4 floors to -129 (clamped)
    g = jax.grad(lambda x: jnp.sum(ste.fake_quantize(x, 1.0, 0.0, "qint8", estimator="clipped", rounding="floor")))(x)
    assert np.asarray(g).tolist() == [[1.0, 1.0, 0.0]]


def _layer_config(kind, relu, est, per_channel):
    """The static configuration ste.conv / ste.linear build (fbgemm, with a bias; conv channels-last)."""
    from qjax._src.ste import ops

    geom = qjax._src.ops.conv_geometry(2, (1, 2), 1, 1, 1) if kind == "conv" else None
    e = ste.get_estimator(est)
    w_axis = (3 if kind == "conv" else 0) if per_channel else None
    return ops._Layer(kind, geom, relu, qjax.engines.resolve("fbgemm"), True, w_axis, e, e)


@pytest.mark.parametrize("est", ["ste", "clipped", "lsq", "lsq_plus"])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31), kind=st.sampled_from(["conv", "linear"]), relu=st.booleans(),
       per_channel=st.booleans(), ties=st.floats(0.0, 0.5), on_grid=st.booleans())
def test_backward_equals_the_surrogates_gradient(est, seed, kind, relu, per_channel, ties, on_grid):
    """The custom VJP (residuals saved in the forward pass, backward written out) gives, bit for bit, jax.grad
    of ``_surrogate`` (the float graph fq -> conv -> relu -> fq it documents): all nine gradients, every
    estimator, per tensor and per channel, conv (channels-last, the layout inside) and linear, with ties and clamping;
    ``on_grid``: x is a dequantized activation passed with its integers (qjax.nn's path: no re-quantize)."""
    from qjax._src.ste import ops

    cfg = _layer_config(kind, relu, est, per_channel)
    rng = np.random.default_rng(seed)
    o, c = 5, 3
    sx, zx, sy, zy = np.float32(0.05), np.float32(rng.integers(90, 140)), np.float32(0.08), np.float32(100.0)
    xshape = (2, 6, 5, c) if kind == "conv" else (4, 12)
    wshape = (3, 3, c, o) if kind == "conv" else (o, 12)
    # inputs on exact rounding ties ((k + 1/2)·s) for a fraction of the elements, and beyond the clamp range
    x = (rng.standard_normal(xshape) * 4).astype(np.float32)
    tie = rng.random(xshape) < ties
    x = np.where(tie, (np.round(x / sx) + np.float32(0.5)) * sx, x).astype(np.float32)
    w = (rng.standard_normal(wshape) * 0.3).astype(np.float32)
    w_rows = np.moveaxis(w, -1, 0) if kind == "conv" else w  # one row per output channel
    wmax = np.abs(w_rows).reshape(o, -1).max(1) if per_channel else np.abs(w).max()
    sw = (wmax / 100).astype(np.float32)
    zw = np.zeros(o, np.float32) if per_channel else np.float32(0)
    swb = sw.reshape(qjax._src.affine.channel_shape(w.ndim, cfg.w_axis)) if per_channel else sw  # beyond ±127·sw: clamped
    w = np.where(rng.random(wshape) < ties, (np.round(w / swb) + np.float32(0.5)) * swb, w).astype(np.float32)
    b = (rng.standard_normal(o) * 0.3).astype(np.float32)
    xq = None
    if on_grid:
        xq = np.asarray(qjax.quantize(x, sx, int(zx), qjax.quint8).values)
        x = np.asarray(ste.fake_quantize(x, sx, zx, "quint8"))
    args = (x, w, b, sx, zx, sw, zw, sy, zy)
    cot = rng.standard_normal(np.shape(ops._surrogate(cfg, *args))).astype(np.float32)

    def custom(*a):
        return jnp.sum(ops._layer(cfg, *a, None, xq)[0] * cot)

    def reference(*a):
        return jnp.sum(ops._surrogate(cfg, *a) * cot)

    got = jax.grad(custom, argnums=tuple(range(9)))(*args)
    want = jax.grad(reference, argnums=tuple(range(9)))(*args)
    for name, g, r in zip(("x", "w", "b", "sx", "zx", "sw", "zw", "sy", "zy"), got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r), err_msg=name)


def test_dequantized_activations_quantize_back_to_their_integers():
    """Why qjax.nn passes an activation's integers on instead of quantizing it again: for every (q, z) pair and
    scales from qjax.nn's floor (float32 eps) to 1e35, quantize(dequantize(q)) == q exactly."""
    from qjax import observers as obs
    from qjax._src.affine import dequantize_values, quantize_values

    q = jnp.asarray(np.tile(np.arange(256), 256).astype(np.uint8))
    z = jnp.asarray(np.repeat(np.arange(256), 256).astype(np.int32))
    rng = np.random.default_rng(0)
    scales = [float(obs.EPS), 1e-6, 0.1, 1.0, 3.0, 1e10, 1e35] + list(np.exp(rng.uniform(np.log(1.2e-7), 80.0, 25)))
    roundtrip = jax.jit(jax.vmap(lambda q, z, s: quantize_values(dequantize_values(q, s, z, None), s, z,
                                                                  qjax.quint8, None), in_axes=(0, 0, None)))
    for s in scales:
        got = roundtrip(q[:, None], z[:, None], jnp.float32(s))[:, 0]
        assert int((got != q).sum()) == 0, s


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31), per_channel=st.booleans(), engine=st.sampled_from(["fbgemm", "x86", "gemmlowp"]))
def test_torch_layout_is_the_channels_last_layer_transposed(seed, per_channel, engine):
    """One layout inside: a torch-layout ste.conv is the channels-last one with its operands transposed at the
    edge — outputs, integers and all gradients (per-tensor sums included) bit for bit."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = (rng.standard_normal((6, 2, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(6) * 0.2).astype(np.float32)
    sw = (np.abs(w).reshape(6, -1).max(1) / 127).astype(np.float32) if per_channel else np.float32(np.abs(w).max() / 127)
    zw = np.zeros(6, np.float32) if per_channel else np.float32(0)
    geo = dict(stride=(1, 2), padding=1, groups=2, relu=True, engine=engine)

    def loss(cl, x, w, b, sx, sw, sy):
        kw = dict(x_scale=sx, x_zero_point=120.0, w_scale=sw, w_zero_point=zw, scale=sy, zero_point=90.0)
        y, q = ste.conv(x, w, b, channels_last=cl, return_integers=True, **kw, **geo)
        y, q = (jnp.moveaxis(y, -1, 1), jnp.moveaxis(q, -1, 1)) if cl else (y, q)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))), q

    args = (x, w, b, np.float32(0.02), sw, np.float32(0.05))
    args_cl = (np.moveaxis(x, 1, -1), np.transpose(w, (2, 3, 1, 0))) + args[2:]
    (l_t, q_t), g_t = jax.value_and_grad(functools.partial(loss, False), argnums=tuple(range(6)), has_aux=True)(*args)
    (l_c, q_c), g_c = jax.value_and_grad(functools.partial(loss, True), argnums=tuple(range(6)), has_aux=True)(*args_cl)
    np.testing.assert_array_equal(np.asarray(q_t), np.asarray(q_c))
    np.testing.assert_array_equal(np.asarray(g_t[0]), np.moveaxis(np.asarray(g_c[0]), -1, 1))
    np.testing.assert_array_equal(np.asarray(g_t[1]), np.transpose(np.asarray(g_c[1]), (3, 2, 0, 1)))
    for name, a, c in zip(("b", "sx", "sw", "sy"), g_t[2:], g_c[2:]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c), err_msg=name)
