"""The Linen wrappers through the lifecycle: calibrate → load qparams → QAT gradients → integer == QAT forward."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen

import qjax
from qjax import observers
from qjax.nn import linen as qln

ENGINE = qjax.Fbgemm.host()


class Net(linen.Module):
    mode: str = "float"

    @linen.compact
    def __call__(self, x):
        x = qln.QuantStub(mode=self.mode)(x)
        x = qln.QConv(3, 8, (3, 3), padding=1, relu=True, engine=ENGINE, mode=self.mode)(x)
        x = qln.Flatten(mode=self.mode)(x)
        x = qln.QDense(8 * 6 * 6, 5, engine=ENGINE, mode=self.mode)(x)
        return qln.DeQuantStub(mode=self.mode)(x)


def test_linen_lifecycle():
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 3)).astype(np.float32)
    v = Net("float").init(jax.random.key(0), x)
    assert set(v) == {"params", "QParam", "ObserverState"}
    _, upd = Net("calibrate").apply(v, x, mutable=["ObserverState"])
    v = {**v, **upd}
    o = observers.min_max("quint8", quant_min=0, quant_max=127)
    st = o.update(o.init(), x)
    obs_state = jax.tree_util.tree_leaves(v["ObserverState"])
    assert any(a.shape == (2,) and float(a[0]) == float(st["min_val"]) for a in obs_state)
    _, upd = Net("load").apply(v, x, mutable=["QParam"])
    v = {**v, **upd}
    s, _ = o.qparams(st)
    assert any(np.asarray(a).shape == () and float(a) == float(s) for a in jax.tree_util.tree_leaves(v["QParam"]))
    y_qat = Net("qat").apply(v, x)
    g = jax.grad(lambda p: jnp.sum(Net("qat").apply({**v, "params": p}, x) ** 2))(v["params"])
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(g))
    y_int = jax.jit(lambda v, x: Net("integer").apply(v, x))(v, x)
    np.testing.assert_array_equal(np.asarray(y_int), np.asarray(y_qat))


def test_linen_model_exports_to_torch_bit_exact():
    import pytest

    torch = pytest.importorskip("torch")
    from flax import nnx

    from qjax import nn as qnn
    from qjax._src.interop.torch import torch_engine

    x = np.random.default_rng(1).standard_normal((8, 6, 6, 3)).astype(np.float32)
    v = Net("float").init(jax.random.key(0), x)
    _, upd = Net("calibrate").apply(v, x, mutable=["ObserverState"])
    v = {**v, **upd}
    _, upd = Net("load").apply(v, x, mutable=["QParam"])
    v = {**v, **upd}
    y_int = np.asarray(Net("integer").apply(v, x))
    r = nnx.Rngs(5)  # different initial weights: everything must come from v
    seq = qnn.Sequential(qnn.QuantStub(), qnn.QConv(3, 8, (3, 3), padding=1, relu=True, engine=ENGINE, rngs=r),
                         qnn.Flatten(), qnn.QDense(8 * 6 * 6, 5, engine=ENGINE, rngs=r), qnn.DeQuantStub())
    qnn.linen.load_into(seq, v)
    qnn.convert(seq)
    np.testing.assert_array_equal(np.asarray(seq(x)), y_int)
    with torch_engine("fbgemm"):
        want = qnn.to_torch(seq)(torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))).numpy()
    assert int((y_int != want).sum()) == 0
