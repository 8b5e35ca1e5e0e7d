"""TFLiteQAT: QAT of an imported .tflite with its family's exact integers, then to_tflite — LiteRT computes them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip("ai_edge_litert")

import qjax  # noqa: E402
from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.interop.tflite import from_tflite  # noqa: E402
from qjax._src.interop.tflite_train import TFLiteQAT, quantize_bias, quantize_weight  # noqa: E402
from ..tflite_models import every_op_model, mobilenet_style  # noqa: E402
from .test_tflite_write import _CHAIN, _transpose_convs  # noqa: E402

FAMILIES = ("reference", "optimized", "xnnpack")


def _dataset(n, shape, seed=0, classes=10, noise=0.6):
    """A seeded classification set: ``classes`` smooth random prototypes of ``shape`` plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((classes,) + tuple(shape))
    protos = (protos + np.roll(protos, 1, 0) + np.roll(protos, 1, 1)) / np.sqrt(3.0)  # spatially correlated
    y = rng.integers(0, classes, n)
    x = protos[y] + noise * rng.standard_normal((n,) + tuple(shape))
    return x.astype(np.float32), y.astype(np.int32)


def test_converter_rounding_rules():
    # TfLiteRound is std::round: ties away from zero (half-even would give 2 / -2); weights clamp to [-127, 127]
    w = np.array([[1.25, 0.25], [-0.75, 0.5], [1e3, -1e3]], np.float32)
    qw = jax.jit(quantize_weight, static_argnums=2)(w, np.float32([0.5, 0.25]), 1)  # jitted: one compilation
    np.testing.assert_array_equal(np.asarray(qw), [[3, 1], [-2, 2], [127, -127]])
    qb = jax.jit(quantize_bias)(jnp.array([5.0, -5.0, 0.75, 3e9, -3e9]), np.float32(0.5))
    np.testing.assert_array_equal(np.asarray(qb), [3, -3, 0, 1500000000, -1500000000])
    qb = jax.jit(quantize_bias)(jnp.array([2.5, -2.5, 3e9, -3e9]), np.float32(1.0))
    np.testing.assert_array_equal(np.asarray(qb), [3, -3, 2147483520, -2147483520])


def test_init_reproduces_the_imported_model_and_the_gradient_is_the_surrogates():
    qm = from_tflite(_CHAIN, kernels="reference")
    qat = TFLiteQAT(qm)
    x = np.random.default_rng(0).integers(-128, 128, (4, 6, 6, 2)).astype(np.int8)
    p = qat.init()
    assert set(p) == set(qat.trainable) and len(qat.trainable) == 3 and not qat.inexact_biases

    def loss(y):
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))

    @jax.jit  # one compilation: the quantized params, apply's output and gradient, the surrogate's VJP there
    def everything(p, x):
        (_, y), g = jax.value_and_grad(lambda p: (loss(qat.apply(p, x)), qat.apply(p, x)), has_aux=True)(p)
        _, vjp = jax.vjp(lambda p: qat.surrogate(p, x), p)
        return qat.quantized_params(p), y, g, vjp(jax.grad(loss)(y))[0]

    q, y, g, want = everything(p, x)
    for name in qat.trainable:  # init is the inverse of the converter's rounding
        np.testing.assert_array_equal(np.asarray(q[name]["weight"].values), np.asarray(qm.params[name]["weight"].values))
        np.testing.assert_array_equal(np.asarray(q[name]["bias"]), np.asarray(qm.params[name]["bias"]))
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(float(jnp.abs(a).sum()) > 0 for a in jax.tree_util.tree_leaves(g))
    # apply's value is the integer model's output (the interpreter's: test_tflite_write checks qm against it),
    # dequantized
    out_scale, out_zp = qm.node(qat.trainable[-1]).config()["out_qparams"]
    want_ints = litert_runtime.run(_CHAIN, [x], "reference")[0]
    np.testing.assert_array_equal(np.asarray(y), (want_ints.astype(np.float32) - out_zp) * np.float32(out_scale))


def test_the_surrogate_follows_every_op():
    # the float surrogate (what the gradient is of) of a model with every imported op stays within a few output
    # steps of the interpreter's integers: each surrogate op has the op's semantics (a wrong pooling window, pad
    # value, activation or layout would be tens of steps off)
    data = every_op_model(0)
    qm = from_tflite(data, kernels="reference")
    qat = TFLiteQAT(qm)
    x = np.random.default_rng(5).standard_normal((16, 8, 8, 4)).astype(np.float32)
    ys = jax.jit(qat.surrogate)(qat.init(), x)
    wants = litert_runtime.run(data, [x], "reference")
    assert len(ys) == len(wants) == 3
    for ref, got, want in zip(qm.output, ys, wants):
        cfg = qm.node(qm.node(ref.name).args[0].name).config()  # the op producing the output
        if want.dtype == np.float32:  # after DEQUANTIZE: its input's step
            step, want_f = cfg["in_qparams"][0][0], want
        else:
            (step, zp), want_f = cfg["out_qparams"], None
            want_f = (want.astype(np.float32) - zp) * np.float32(step)
        d = np.rint(np.abs(np.asarray(got) - want_f) / step)  # whole steps
        assert np.median(d) <= 1 and np.percentile(d, 95) <= 3, (ref.name, np.median(d), np.percentile(d, 95))


def test_the_surrogate_follows_transpose_conv():
    # TRANSPOSE_CONV's surrogate (a stride-dilated convolution with the flipped kernel, cropped as TFLite pads)
    data = _transpose_convs()
    qm = from_tflite(data, kernels="reference")
    qat = TFLiteQAT(qm)
    assert len(qat.trainable) == 2
    xs = np.random.default_rng(4).integers(-128, 128, (4, 1, 4, 5, 2)).astype(np.int8)  # output_shape fixes batch 1
    sur, p = jax.jit(qat.surrogate), qat.init()
    got = np.concatenate([np.asarray(sur(p, x)) for x in xs])
    want = np.concatenate([litert_runtime.run(data, [x], "reference")[0] for x in xs])
    step, zp = qm.node(qm.node(qm.output.name).args[0].name).config()["out_qparams"]
    d = np.rint(np.abs(got - (want.astype(np.float32) - zp) * np.float32(step)) / step)
    assert np.median(d) <= 1 and np.percentile(d, 95) <= 3, (np.median(d), np.percentile(d, 95))


def test_qat_round_trip_is_bit_exact_in_litert():
    # QAT of a MobileNet-style model (xnnpack family) on a seeded 10-class set, written back with to_tflite:
    # LiteRT's interpreter computes the trained QModel's integers under each family (the written file re-imported
    # per family; for xnnpack, the trained QModel itself)
    data = mobilenet_style(0, size=8, width=4)
    qm = from_tflite(data, kernels="xnnpack")
    qat = TFLiteQAT(qm)
    x, y = _dataset(320, (8, 8, 3))
    xtr, ytr, xte, yte = x[:256], y[:256], x[256:], y[256:]

    def loss_fn(p, xb, yb):
        prob = qat.apply(p, xb)  # the model ends in SOFTMAX -> DEQUANTIZE: probabilities at 1/256
        return -jnp.mean(jnp.log(jnp.maximum(jnp.take_along_axis(prob, yb[:, None], 1)[:, 0], 1.0 / 512)))

    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    p = qat.init()
    s = opt.init(p)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(30):
        idx = rng.integers(0, len(xtr), 64)
        p, s, loss = step(p, s, xtr[idx], ytr[idx])
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    trained = qat.to_qmodel(p)
    out = qjax.to_tflite(trained)
    assert out != data
    acc0 = float(np.mean(np.argmax(litert_runtime.run(data, [xte], "xnnpack")[0], 1) == yte))
    wants = {}
    for fam in FAMILIES:
        wants[fam] = want = litert_runtime.run(out, [xte], fam)[0]
        got = np.asarray((trained if fam == "xnnpack" else from_tflite(out, kernels=fam))(xte))
        assert got.dtype == want.dtype and got.shape == want.shape
        assert int((got != want).sum()) == 0, fam
        acc1 = float(np.mean(np.argmax(want, 1) == yte))
        assert acc1 > acc0 + 0.2, (fam, acc0, acc1)
    # the data tell the families apart: the xnnpack-trained integers are not what the reference kernels compute
    # (53 of 640 outputs differ), so a QModel on the wrong family's arithmetic fails the comparison above
    assert int((wants["xnnpack"] != wants["reference"]).sum()) > 0


def test_a_shared_weight_tensor_is_one_trainable_leaf():
    # two convs reading one weight tensor: one "kernel" leaf, so training keeps them equal and to_tflite can write it
    from .test_tflite_write import _shared_weights_model

    data = _shared_weights_model()
    qm = from_tflite(data, kernels="reference")
    qat = TFLiteQAT(qm)
    c0, c1 = qat.trainable
    params = qat.init()
    assert "kernel" in params[c0] and "kernel" not in params[c1] and "bias" in params[c1]
    x = np.random.default_rng(2).integers(-128, 128, (2, 5, 5, 4)).astype(np.int8)
    g = jax.jit(jax.grad(lambda p: jnp.sum(qat.apply(p, x) ** 2)))(params)
    params = jax.tree_util.tree_map(lambda p, d: p - 0.05 * jnp.sign(d), params, g)
    qm2 = qat.to_qmodel(params)
    out = qjax.to_tflite(qm2)
    assert int((np.asarray(qm2(x)) != litert_runtime.run(out, [x], "reference")[0]).sum()) == 0
    assert int((np.asarray(qm2(x)) != np.asarray(qm(x))).sum()) > 0  # the step changed the model
