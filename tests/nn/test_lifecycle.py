"""A Flax NNX CNN through the whole lifecycle: calibrate → QAT → convert → torch export, bit-exact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import qjax
from qjax import nn as qnn
from qjax import observers

ENGINE = qjax.Fbgemm.host()


def make_cnn(engine=ENGINE, seed=0):
    r = nnx.Rngs(seed)
    return qnn.Sequential(
        qnn.QuantStub(),
        qnn.QConv(3, 8, (3, 3), padding=1, relu=True, engine=engine, rngs=r),
        qnn.QConv(8, 16, (3, 3), strides=2, padding=1, relu=True, engine=engine, rngs=r),
        qnn.QConv(16, 16, (3, 3), padding=1, groups=16, engine=engine, rngs=r),  # depthwise
        qnn.MaxPool((3, 3), (2, 2), padding=1),
        qnn.Flatten(),
        qnn.QDense(16 * 2 * 2, 10, engine=engine, rngs=r),
        qnn.DeQuantStub())


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8, 8, 3)).astype(np.float32)
    labels = jnp.asarray(rng.integers(0, 10, 32))
    return x, labels


def _calibrate(m, x):
    qnn.prepare(m)
    for i in range(0, len(x), 8):
        m(x[i:i + 8])


def test_calibration_uses_the_observers(data):
    x, _ = data
    m = make_cnn()
    _calibrate(m, x)
    o = observers.min_max("quint8", quant_min=0, quant_max=127)
    st = o.init()
    for i in range(0, len(x), 8):
        st = o.update(st, x[i:i + 8])
    np.testing.assert_array_equal(np.asarray(m.layers[0].act_obs.get_value()[0]), np.asarray(st["min_val"]))
    qnn.prepare_qat(m)
    s, z = o.qparams(st)
    assert float(m.layers[0].scale.get_value()) == float(s) and float(m.layers[0].zero_point.get_value()) == float(z)


@pytest.mark.torch
def test_lifecycle_qat_convert_and_torch_export_are_bit_exact(data, tmp_path):
    import torch

    x, labels = data
    m = make_cnn()
    _calibrate(m, x)
    qnn.prepare_qat(m)
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()
    opt = nnx.Optimizer(m, optax.adam(1e-4), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, g = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, g)
        return loss

    losses = [float(step(m, opt)) for _ in range(8)]
    assert losses[-1] < losses[0]
    y_qat = np.asarray(m(x))  # QAT forward = the integer path
    qnn.convert(m)
    y_int = np.asarray(nnx.jit(lambda m, x: m(x))(m, x))
    np.testing.assert_array_equal(y_qat, y_int)
    tm = qnn.to_torch(m)
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        y_torch = tm(torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))).numpy()
    finally:
        torch.backends.quantized.engine = prev
    assert int((y_int != y_torch).sum()) == 0
    # checkpoint round trip
    qnn.save(m, str(tmp_path / "ckpt.msgpack"))
    m2 = make_cnn(seed=1)
    qnn.convert(m2)
    qnn.load(m2, str(tmp_path / "ckpt.msgpack"))
    np.testing.assert_array_equal(np.asarray(m2(x)), y_int)
    qnn.save(m, str(tmp_path / "ckpt.safetensors"))
    m3 = make_cnn(seed=2)
    qnn.convert(m3)
    qnn.load(m3, str(tmp_path / "ckpt.safetensors"))
    np.testing.assert_array_equal(np.asarray(m3(x)), y_int)
    with pytest.raises(ValueError, match="does not match"):
        qnn.load(qnn.Sequential(qnn.QuantStub()), str(tmp_path / "ckpt.safetensors"))


@pytest.mark.parametrize("spec", ["gemmlowp", "dyadic8"])
def test_hardware_spec_modules_qat_equals_integer(data, spec):
    x, _ = data
    m = make_cnn(engine=spec)
    _calibrate(m, x)
    qnn.prepare_qat(m)
    y_qat = np.asarray(m(x))
    g = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(m)
    assert np.isfinite(np.asarray(g.layers[1].kernel.get_value())).all()
    qnn.convert(m)
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, x: m(x))(m, x)), y_qat)
    with pytest.raises(TypeError, match="hardware spec"):
        qnn.to_torch(m)


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        qnn.set_mode(make_cnn(), "int8")
    with pytest.raises(TypeError, match="Sequential"):
        qnn.to_torch(qnn.QuantStub())


def test_x86_convs_are_pinned_for_jit_and_quantstub_rounding(data):
    x, _ = data
    m = make_cnn(engine="x86")
    _calibrate(m, x)
    qnn.prepare_qat(m)
    y_qat = np.asarray(nnx.jit(lambda m, x: m(x))(m, x))
    qnn.convert(m)
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, x: m(x))(m, x)), y_qat)
    stub = qnn.QuantStub(rounding="half_away", mode="integer")
    stub.scale.set_value(jnp.float32(0.1))
    stub.zero_point.set_value(jnp.float32(10.0))
    q = stub(jnp.asarray([0.05, 0.15, -0.05, 0.25], jnp.float32) * 1.0)
    # x/s = .5, 1.5, -.5, 2.5 -> half away from zero: 1, 2, -1, 3 (torch's half-even would give 0, 2, 0, 2)
    assert np.asarray(q.values).tolist() == [11, 12, 9, 13]


@pytest.mark.torch
def test_histogram_observer_modules_match_torch_default_qconfig(data):
    """torch's fbgemm default activation observer (HistogramObserver, reduce_range) inside qjax.nn: the stub's
    scale / zero point equal a torch QuantStub's calibrated on the same batches; jitted calibration works."""
    import torch
    from torch.ao.quantization import QuantStub, get_default_qconfig, prepare

    x, _ = data
    hist_obs = ("histogram", (("reduce_range", True),))
    m = qnn.Sequential(qnn.QuantStub(observer=hist_obs),
                       qnn.QConv(3, 8, (3, 3), padding=1, relu=True, observer=hist_obs, rngs=nnx.Rngs(0)),
                       qnn.DeQuantStub())
    qnn.prepare(m)
    calib = nnx.jit(lambda m, x: m(x))
    t = torch.nn.Sequential(QuantStub())
    t.qconfig = get_default_qconfig("fbgemm")
    t = prepare(t)
    for i in range(0, len(x), 8):
        calib(m, x[i:i + 8])
        t(torch.from_numpy(x[i:i + 8]))
    qnn.convert(m, from_observers=True)
    ts, tz = t[0].activation_post_process.calculate_qparams()
    assert float(m.layers[0].scale.get_value()) == ts.item()
    assert float(m.layers[0].zero_point.get_value()) == tz.item()
    assert m.layers[0].act_obs.get_value().shape == (2 + 2048,)
    y = np.asarray(m(x))  # the converted model runs with the histogram-derived qparams
    assert np.isfinite(y).all() and float(m.layers[1].scale.get_value()) > 0


def test_qconv_torch_layout_option(data):
    x, _ = data
    a = qnn.QConv(3, 4, (3, 3), padding=1, relu=True, rngs=nnx.Rngs(0))
    b = qnn.QConv(3, 4, (3, 3), padding=1, relu=True, layout="NCHW", rngs=nnx.Rngs(0))
    x_nchw = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
    for mode in ("calibrate", "qat", "integer"):
        for m in (a, b):
            qnn.set_mode(m, mode)
            if mode == "qat":
                m.load_qparams()
        if mode == "calibrate":
            ya, yb = a(x), b(x_nchw)
        else:
            stub = qnn.QuantStub()
            stub.scale.set_value(jnp.float32(0.03))
            stub.zero_point.set_value(jnp.float32(128))
            qnn.set_mode(stub, mode)
            xa = stub(x)
            xb = stub(x_nchw)
            ya, yb = a(xa), b(xb)
            ya, yb = (ya.value, yb.value) if mode == "qat" else (ya.values, yb.values)
        np.testing.assert_array_equal(np.asarray(ya), np.moveaxis(np.asarray(yb), 1, -1))
    with pytest.raises(ValueError, match="layout"):
        qnn.QConv(3, 4, (3, 3), layout="NCW", rngs=nnx.Rngs(0))


@pytest.mark.torch
def test_observer_module_wrappers():
    import torch
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    rng = np.random.default_rng(3)
    h, th = qnn.Observer("histogram", reduce_range=True), HistogramObserver(reduce_range=True)
    pc = qnn.Observer("per_channel_min_max", channels=4, ch_axis=1, dtype="qint8", qscheme="per_channel_symmetric")
    tpc = PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    for _ in range(3):
        x = rng.standard_normal((5, 4, 3)).astype(np.float32)
        assert h(x) is x
        pc(x)
        th(torch.from_numpy(x))
        tpc(torch.from_numpy(x))
    for mine, theirs in ((h, th), (pc, tpc)):
        s, z = mine.calculate_qparams()
        ts, tz = theirs.calculate_qparams()
        np.testing.assert_array_equal(np.asarray(s).reshape(-1), ts.numpy().reshape(-1))
        np.testing.assert_array_equal(np.asarray(z).reshape(-1), tz.numpy().reshape(-1))
    with pytest.raises(ValueError, match="not an observer"):
        qnn.Observer("histc")


def test_stochastic_rounding_spec_takes_a_key(data):
    """A spec that rounds stochastically needs a key; with the same key QAT and integer outputs are equal."""
    x, _ = data
    spec = "tflite_single:rounding=stochastic"
    m = make_cnn(engine=spec)
    _calibrate(m, x[:8])
    qnn.prepare_qat(m)
    with pytest.raises(ValueError, match="key"):
        m(x[:4])
    k = jax.random.key(3)
    y_qat = np.asarray(m(x[:4], key=k))
    g = nnx.grad(lambda m: jnp.sum(m(x[:4], key=k) ** 2))(m)
    assert np.isfinite(np.asarray(g.layers[1].kernel.get_value())).all()
    qnn.convert(m)
    np.testing.assert_array_equal(np.asarray(m(x[:4], key=k)), y_qat)
    assert not np.array_equal(np.asarray(m(x[:4], key=jax.random.key(4))), y_qat)  # the key matters
