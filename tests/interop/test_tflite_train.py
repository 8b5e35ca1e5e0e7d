"""TFLiteQAT: QAT of an imported .tflite with its family's exact integers, then to_tflite — LiteRT computes them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.interop.tflite import from_tflite  # noqa: E402
from qjax._src.interop.tflite_train import TFLiteQAT, quantize_bias, quantize_weight  # noqa: E402
from .test_tflite_write import _CHAIN  # noqa: E402

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
